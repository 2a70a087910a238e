// tokenizer.h -- byte-exact re-implementation of llama.cpp's BPE ("gpt2") and SPM ("llama")
// tokenizers. The Python side (python/llmetal/tokenizer.py) reads the GGUF metadata, decides
// every token's attributes and the special ids, and hands the finished vocabulary here; this
// file does the hot loops: special-token partition, pre-tokenizer split, BPE merges, SPM
// merges, and token -> text pieces.
//
// The rules (which regex a pre-tokenizer uses, merge order and tie-breaks, byte fallback,
// how special tokens are cut out) follow llama.cpp's src/llama-vocab.cpp and src/unicode.cpp,
// read as a specification; the code is our own.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace llmetal {
namespace tok {

// Code point classes (bit per Unicode general-category major class, + White_Space).
enum : uint16_t {
    UF_UNDEFINED = 0x01,   // Cn: unassigned
    UF_NUMBER = 0x02,      // \p{N}
    UF_LETTER = 0x04,      // \p{L}
    UF_SEPARATOR = 0x08,   // \p{Z}
    UF_MARK = 0x10,        // \p{M}
    UF_PUNCT = 0x20,       // \p{P}
    UF_SYMBOL = 0x40,      // \p{S}
    UF_CONTROL = 0x80,     // \p{C}
    UF_WHITESPACE = 0x100, // \s (Unicode White_Space)
};
uint16_t cpt_flags(uint32_t cp);

// Token attributes (same meaning as llama.cpp's llama_token_attr bits).
enum : uint32_t {
    TA_UNDEFINED = 0,
    TA_UNKNOWN = 1u << 0,
    TA_UNUSED = 1u << 1,
    TA_NORMAL = 1u << 2,
    TA_CONTROL = 1u << 3,
    TA_USER_DEFINED = 1u << 4,
    TA_BYTE = 1u << 5,
    TA_LSTRIP = 1u << 7,
    TA_RSTRIP = 1u << 8,
};

// Pre-tokenizers (tokenizer.ggml.pre families). Each is a fixed sequence of split steps.
enum class Pre { Default, GPT2, SmolLM, Llama3, Qwen2, Tekken };

// Decode UTF-8 the way llama.cpp does: an invalid sequence yields U+FFFD and skips one byte.
std::vector<uint32_t> utf8_to_cpts(std::string_view s);
void append_utf8(std::string& out, uint32_t cp);

struct Config {
    bool spm = false;               // true: SentencePiece-style ("llama"); false: byte-level BPE
    Pre pre = Pre::Default;
    bool ignore_merges = false;     // a whole pre-token that is a vocab entry is taken as is
    bool add_space_prefix = false;  // SPM: prefix ' ' to the text (and after special tokens)
    bool clean_spaces = false;      // detokenize: remove the space before ?!., and in contractions
    bool add_bos = false, add_eos = false;  // the model's defaults (detokenize's remove_special)
    int32_t bos = -1, eos = -1;
};

class Tokenizer {
public:
    Tokenizer(Config cfg, std::vector<std::string> tokens, std::vector<uint32_t> attrs,
              std::vector<float> scores, const std::vector<std::string>& merges);
    Tokenizer(const Tokenizer&) = delete;  // holds string_views into its own storage
    Tokenizer& operator=(const Tokenizer&) = delete;

    // Byte ranges [first, second) of the text where control tokens are not parsed even with
    // parse_special (chat message content inside a rendered template).
    using Ranges = std::vector<std::pair<size_t, size_t>>;
    std::vector<int32_t> encode(std::string_view text, bool add_bos, bool add_eos, bool parse_special,
                                const Ranges& plain = {}) const;
    // llama_detokenize: concatenated pieces; control/unknown tokens render only if unparse_special.
    std::string detokenize(const std::vector<int32_t>& ids, bool remove_special, bool unparse_special) const;
    // The piece of one token (with special=true, as llama-tokenize prints it).
    const std::string& piece(int32_t id) const { return pieces_.at(check(id)); }
    // The pre-tokenizer's split of raw text (UTF-8 pieces before byte encoding), for tests.
    std::vector<std::string> split(std::string_view text) const;

    int32_t n_tokens() const { return (int32_t)texts_.size(); }
    const std::string& text(int32_t id) const { return texts_.at(check(id)); }
    uint32_t attr(int32_t id) const { return attrs_.at(check(id)); }
    const Config& config() const { return cfg_; }
    int32_t text_to_token(std::string_view s) const {
        auto it = token_to_id_.find(s);
        return it == token_to_id_.end() ? -1 : it->second;
    }

private:
    struct Fragment { int32_t token; size_t off, len; };  // token >= 0: a special token; else raw text
    size_t check(int32_t id) const;
    void partition(std::string_view text, bool parse_special, const Ranges& plain,
                   std::vector<Fragment>& frags) const;
    void bpe_fragment(std::string_view text, std::vector<int32_t>& out) const;
    void bpe_word(const std::string& word, std::vector<int32_t>& out) const;
    int32_t sym_id(std::string_view s) const {
        auto it = sym_id_.find(s);
        return it == sym_id_.end() ? -1 : it->second;
    }
    void spm_fragment(const std::string& text, std::vector<int32_t>& out) const;
    int32_t spm_byte_token(uint8_t b) const;
    std::vector<size_t> split_offsets(const std::vector<uint32_t>& cpts) const;
    std::string make_piece(int32_t id) const;

    Config cfg_;
    std::vector<std::string> texts_;
    std::vector<uint32_t> attrs_;
    std::vector<float> scores_;
    std::vector<std::string> pieces_;
    std::unordered_map<std::string_view, int32_t> token_to_id_;  // views into texts_ (last id wins)
    std::vector<int32_t> special_;                               // partition order: longest text first

    // BPE: every string a symbol can hold gets an id (vocab ids first, then merge results that
    // are not vocab entries); merges_[(left_id << 32) | right_id] = (rank, merged_id).
    std::vector<std::string> extra_strings_;
    std::unordered_map<std::string_view, int32_t> sym_id_;
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
};

}  // namespace tok
}  // namespace llmetal
