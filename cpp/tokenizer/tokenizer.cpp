// tokenizer.cpp -- see tokenizer.h. The behaviour mirrors llama.cpp (src/llama-vocab.cpp,
// src/unicode.cpp), including its quirks, because the goal is identical token ids.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <queue>
#include <stdexcept>

#include "engine.h"  // llmetal::Error -> ValueError in Python
#include "tokenizer/unicode_flags.h"

namespace llmetal {
namespace tok {

// ---------------------------------------------------------------------------------------
// Unicode helpers
// ---------------------------------------------------------------------------------------

// Flags of every code point, expanded once from the range table (2 bytes x 1.1M = 2.2 MB).
static const std::vector<uint16_t>& flag_table() {
    static const std::vector<uint16_t> table = [] {
        std::vector<uint16_t> t(0x110000);
        const size_t n = sizeof(kUnicodeRanges) / sizeof(kUnicodeRanges[0]);
        for (size_t i = 0; i < n; ++i) {
            uint32_t end = i + 1 < n ? kUnicodeRanges[i + 1].first : 0x110000;
            std::fill(t.begin() + kUnicodeRanges[i].first, t.begin() + end, kUnicodeRanges[i].flags);
        }
        return t;
    }();
    return table;
}

uint16_t cpt_flags(uint32_t cp) {
    return cp < 0x110000 ? flag_table()[cp] : UF_UNDEFINED;
}

// Length of a UTF-8 sequence from its first byte's high nibble (continuation bytes count 1).
static inline size_t utf8_len(uint8_t b) {
    static const uint8_t lut[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lut[b >> 4];
}

std::vector<uint32_t> utf8_to_cpts(std::string_view s) {
    std::vector<uint32_t> out;
    out.reserve(s.size());
    const uint8_t* p = (const uint8_t*)s.data();
    size_t i = 0, n = s.size();
    auto cont = [&](size_t k) { return i + k < n && (p[i + k] & 0xC0) == 0x80; };
    while (i < n) {
        uint8_t b = p[i];
        if (b < 0x80) { out.push_back(b); i += 1; continue; }
        // Only the continuation bytes are checked (not overlong forms or surrogates), like llama.cpp.
        if ((b & 0xE0) == 0xC0 && cont(1)) {
            out.push_back(((b & 0x1F) << 6) | (p[i + 1] & 0x3F)); i += 2; continue;
        }
        if ((b & 0xF0) == 0xE0 && cont(1) && cont(2)) {
            out.push_back(((b & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F)); i += 3; continue;
        }
        if ((b & 0xF8) == 0xF0 && cont(1) && cont(2) && cont(3)) {
            out.push_back(((b & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F));
            i += 4; continue;
        }
        out.push_back(0xFFFD);  // invalid: replacement character, skip one byte
        i += 1;
    }
    return out;
}

void append_utf8(std::string& out, uint32_t cp) {
    if (cp <= 0x7F) {
        out.push_back((char)cp);
    } else if (cp <= 0x7FF) {
        out.push_back((char)(0xC0 | (cp >> 6)));
        out.push_back((char)(0x80 | (cp & 0x3F)));
    } else if (cp <= 0xFFFF) {
        out.push_back((char)(0xE0 | (cp >> 12)));
        out.push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back((char)(0x80 | (cp & 0x3F)));
    } else if (cp <= 0x10FFFF) {
        out.push_back((char)(0xF0 | (cp >> 18)));
        out.push_back((char)(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back((char)(0x80 | (cp & 0x3F)));
    } else {
        throw Error("tokenizer: text decodes to code point > U+10FFFF (invalid UTF-8)");
    }
}

// GPT-2's byte <-> printable-char mapping: bytes that are printable Latin-1 ('!'..'~',
// '¡'..'¬', '®'..'ÿ') map to themselves; the other 68 bytes map to U+0100, U+0101, ... in
// byte order. Byte-level BPE vocabularies are written in this alphabet.
static const std::vector<std::string>& byte_to_char() {
    static const std::vector<std::string> table = [] {
        std::vector<std::string> t(256);
        int extra = 0;
        for (int b = 0; b < 256; ++b) {
            bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            append_utf8(t[b], printable ? (uint32_t)b : (uint32_t)(256 + extra++));
        }
        return t;
    }();
    return table;
}

// The reverse: code point -> byte, -1 if the code point is not in the alphabet.
static int char_to_byte(uint32_t cp) {
    static const std::vector<int16_t> table = [] {
        std::vector<int16_t> t(512, -1);
        for (int b = 0; b < 256; ++b) {
            uint32_t cp = utf8_to_cpts(byte_to_char()[b])[0];
            t[cp] = (int16_t)b;
        }
        return t;
    }();
    return cp < 512 ? table[cp] : -1;
}

// ---------------------------------------------------------------------------------------
// Pre-tokenizer split steps. Text is a code point array; a split is a list of segment
// lengths; each step re-splits every segment independently (like llama.cpp's chain of
// regexes, where a later regex never matches across an earlier boundary).
// ---------------------------------------------------------------------------------------

namespace {

struct SplitText {
    const std::vector<uint32_t>& cpts;
    std::vector<uint16_t> flags;
    std::vector<uint8_t> collapsed;  // one byte per code point, see collapse()

    explicit SplitText(const std::vector<uint32_t>& c) : cpts(c), flags(c.size()) {
        for (size_t i = 0; i < c.size(); ++i) flags[i] = cpt_flags(c[i]);
    }

    // llama.cpp runs the patterns that are not hand-coded with std::regex over a "collapsed"
    // text: ASCII stays itself, other whitespace becomes '\v', and every other code point
    // becomes one byte standing for its class (0xD1 number, 0xD2 letter, 0xD3 punctuation,
    // 0xD4 mark, 0xD5 symbol, 0xD0 anything else). The steps below that emulate such
    // patterns work on this representation, so e.g. [^a-z] holds for every non-ASCII letter.
    void collapse() {
        if (!collapsed.empty() || cpts.empty()) return;
        collapsed.resize(cpts.size());
        for (size_t i = 0; i < cpts.size(); ++i) {
            uint32_t c = cpts[i];
            uint16_t f = flags[i];
            uint8_t v;
            if (c < 128) v = (uint8_t)c;
            else if (f & UF_WHITESPACE) v = 0x0B;
            else {
                switch (f & 0xFF) {
                    case UF_NUMBER: v = 0xD1; break;
                    case UF_LETTER: v = 0xD2; break;
                    case UF_PUNCT: v = 0xD3; break;
                    case UF_MARK: v = 0xD4; break;
                    case UF_SYMBOL: v = 0xD5; break;
                    default: v = 0xD0;
                }
            }
            collapsed[i] = v;
        }
    }
};

// Position-safe accessors inside one segment [b, e): outside it a code point reads as
// "none" (flags 0), as at the end of the text.
struct Seg {
    const SplitText& t;
    size_t b, e;
    uint32_t cpt(size_t i) const { return i >= b && i < e ? t.cpts[i] : 0xFFFFFFFFu; }
    uint16_t fl(size_t i) const { return i >= b && i < e ? t.flags[i] : 0; }
    bool in(size_t i) const { return i >= b && i < e; }
};

inline bool is_ws(uint16_t f) { return f & UF_WHITESPACE; }
inline bool is_l(uint16_t f) { return f & UF_LETTER; }
inline bool is_n(uint16_t f) { return f & UF_NUMBER; }
inline uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// Length of a contraction ('s 't 'm 'd 're 've 'll) at i, 0 if none.
size_t contraction(const Seg& s, size_t i, bool any_case) {
    if (s.cpt(i) != '\'' || !s.in(i + 1)) return 0;
    auto low = [&](uint32_t c) { return any_case ? ascii_lower(c) : c; };
    uint32_t c1 = low(s.cpt(i + 1));
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (s.in(i + 2)) {
        uint32_t c2 = low(s.cpt(i + 2));
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    }
    return 0;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void split_gpt2(const SplitText& t, size_t b, size_t e, std::vector<size_t>& out) {
    Seg s{t, b, e};
    size_t pos = b;
    auto emit = [&](size_t end) { out.push_back(end - pos); pos = end; };
    while (pos < e) {
        if (size_t n = contraction(s, pos, false)) { emit(pos + n); continue; }
        uint32_t c = s.cpt(pos);
        size_t q = pos + (c == ' ' ? 1 : 0);  // optional leading space
        uint16_t f2 = s.fl(q);
        if (is_l(f2)) { while (is_l(s.fl(q))) ++q; emit(q); continue; }
        if (is_n(f2)) { while (is_n(s.fl(q))) ++q; emit(q); continue; }
        if (f2 && !is_ws(f2) && !is_l(f2) && !is_n(f2)) {
            while (s.fl(q) && !is_ws(s.fl(q)) && !is_l(s.fl(q)) && !is_n(s.fl(q))) ++q;
            emit(q);
            continue;
        }
        size_t nws = 0;
        while (is_ws(s.fl(pos + nws))) ++nws;
        if (nws > 1 && s.in(pos + nws)) { emit(pos + nws - 1); continue; }  // \s+(?!\S): leave one
        if (nws > 0) { emit(pos + nws); continue; }
        emit(pos + 1);  // unreachable for in-range code points, kept for safety
    }
}

// Llama-3 / Qwen2: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,K}|
//   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+     with K = 3 (llama3) or 1 (qwen2)
void split_llama3(const SplitText& t, size_t b, size_t e, size_t max_digits, std::vector<size_t>& out) {
    Seg s{t, b, e};
    size_t pos = b;
    auto emit = [&](size_t end) { out.push_back(end - pos); pos = end; };
    auto is_crlf = [](uint32_t c) { return c == '\r' || c == '\n'; };
    while (pos < e) {
        if (size_t n = contraction(s, pos, true)) { emit(pos + n); continue; }
        uint32_t c = s.cpt(pos);
        uint16_t f = s.fl(pos);
        if (!(is_crlf(c) || is_n(f)) && (is_l(f) || is_l(s.fl(pos + 1)))) {
            size_t q = pos + 1;
            while (is_l(s.fl(q))) ++q;
            emit(q);
            continue;
        }
        if (is_n(f)) {
            size_t q = pos;
            while (is_n(s.fl(q)) && q - pos < max_digits) ++q;
            emit(q);
            continue;
        }
        size_t q = pos + (c == ' ' ? 1 : 0);
        uint16_t f2 = s.fl(q);
        if (!is_ws(f2) && !is_l(f2) && !is_n(f2)) {
            while (s.fl(q) && !is_ws(s.fl(q)) && !is_l(s.fl(q)) && !is_n(s.fl(q))) ++q;
            while (s.in(q) && is_crlf(s.cpt(q))) ++q;
            emit(q);
            continue;
        }
        size_t nws = 0, last_crlf_end = 0;
        while (is_ws(s.fl(pos + nws))) {
            if (is_crlf(s.cpt(pos + nws))) last_crlf_end = pos + nws + 1;
            ++nws;
        }
        if (last_crlf_end) { emit(last_crlf_end); continue; }                 // \s*[\r\n]+
        if (nws > 1 && s.in(pos + nws)) { emit(pos + nws - 1); continue; }   // \s+(?!\S)
        if (nws > 0) { emit(pos + nws); continue; }                          // \s+
        emit(pos + 1);
    }
}

// A single-class pattern run over a segment: every maximal run (or, with `single`, every
// code point) of the class is its own piece, and the text between matches is a piece too.
template <class Pred>
void split_class(size_t b, size_t e, Pred in_class, bool single, std::vector<size_t>& out) {
    size_t pos = b, gap = b;
    while (pos < e) {
        if (!in_class(pos)) { ++pos; continue; }
        if (pos > gap) out.push_back(pos - gap);
        size_t q = pos + 1;
        if (!single) while (q < e && in_class(q)) ++q;
        out.push_back(q - pos);
        pos = gap = q;
    }
    if (e > gap) out.push_back(e - gap);
}

// [0-9][0-9][0-9] (plain std::regex on code points): leftmost non-overlapping triples.
void split_digit_triples(const SplitText& t, size_t b, size_t e, std::vector<size_t>& out) {
    auto d = [&](size_t i) { return t.cpts[i] >= '0' && t.cpts[i] <= '9'; };
    size_t pos = b, gap = b;
    while (pos + 3 <= e) {
        if (d(pos) && d(pos + 1) && d(pos + 2)) {
            if (pos > gap) out.push_back(pos - gap);
            out.push_back(3);
            pos = gap = pos + 3;
        } else {
            ++pos;
        }
    }
    if (e > gap) out.push_back(e - gap);
}

// Tekken, run by llama.cpp as std::regex over the collapsed text:
//   [^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+
//  |[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*
//  |\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
// In the collapsed text a letter is A-Z, a-z or 0xD2 (any non-ASCII letter), so "upper" (U)
// is A-Z or 0xD2 and "lower" (W) is a-z or 0xD2. The alternatives are evaluated here with
// the same leftmost-first, greedy-with-backtracking outcome a regex engine gives.
void split_tekken(const SplitText& t, size_t b, size_t e, std::vector<size_t>& out) {
    const uint8_t* c = t.collapsed.data();
    auto LET = [&](size_t i) { return i < e && ((c[i] >= 'A' && c[i] <= 'Z') || (c[i] >= 'a' && c[i] <= 'z') || c[i] == 0xD2); };
    auto NUM = [&](size_t i) { return i < e && ((c[i] >= '0' && c[i] <= '9') || c[i] == 0xD1); };
    auto U = [&](size_t i) { return LET(i) && !(c[i] >= 'a' && c[i] <= 'z'); };
    auto W = [&](size_t i) { return LET(i) && !(c[i] >= 'A' && c[i] <= 'Z'); };
    auto WS = [&](size_t i) { return i < e && (c[i] == ' ' || (c[i] >= '\t' && c[i] <= '\r')); };
    auto CRLF = [&](size_t i) { return i < e && (c[i] == '\r' || c[i] == '\n'); };
    auto PFX = [&](size_t i) { return i < e && !CRLF(i) && !LET(i) && !NUM(i); };
    auto X = [&](size_t i) { return i < e && !WS(i) && !LET(i) && !NUM(i); };
    size_t pos = b;
    auto emit = [&](size_t end) { out.push_back(end - pos); pos = end; };
    while (pos < e) {
        size_t j = pos + (PFX(pos) ? 1 : 0);  // the optional prefix is taken whenever it can be
        size_t maxu = 0;
        while (U(j + maxu)) ++maxu;
        // alternative 1: U* W+ (U* gives back code points until a W follows)
        size_t k = maxu + 1;  // "none"
        if (j + maxu < e && c[j + maxu] >= 'a' && c[j + maxu] <= 'z') k = maxu;
        else for (size_t m = maxu; m-- > 0;) if (c[j + m] == 0xD2) { k = m; break; }
        if (k <= maxu) {
            size_t q = j + k;
            while (W(q)) ++q;
            emit(q);
            continue;
        }
        // alternative 2: U+ W*
        if (maxu > 0) {
            size_t q = j + maxu;
            while (W(q)) ++q;
            emit(q);
            continue;
        }
        if (NUM(pos)) { emit(pos + 1); continue; }
        {
            size_t q = pos + (c[pos] == ' ' ? 1 : 0);
            if (X(q)) {
                while (X(q)) ++q;
                while (q < e && (c[q] == '\r' || c[q] == '\n' || c[q] == '/')) ++q;
                emit(q);
                continue;
            }
        }
        size_t nws = 0, last_crlf_end = 0;
        while (WS(pos + nws)) {
            if (CRLF(pos + nws)) last_crlf_end = pos + nws + 1;
            ++nws;
        }
        if (last_crlf_end) { emit(last_crlf_end); continue; }
        if (nws > 1 && pos + nws < e) { emit(pos + nws - 1); continue; }
        if (nws > 0) { emit(pos + nws); continue; }
        emit(pos + 1);
    }
}

}  // namespace

// The pre-tokenizer of each family: the sequence of steps llama.cpp applies.
std::vector<size_t> Tokenizer::split_offsets(const std::vector<uint32_t>& cpts) const {
    SplitText t(cpts);
    std::vector<size_t> segs{cpts.size()};
    if (cpts.empty()) return {};
    auto apply = [&](auto step) {
        std::vector<size_t> next;
        next.reserve(segs.size() * 2);
        size_t b = 0;
        for (size_t len : segs) {
            step(b, b + len, next);
            b += len;
        }
        segs.swap(next);
    };
    auto gpt2 = [&](size_t b, size_t e, std::vector<size_t>& o) { split_gpt2(t, b, e, o); };
    auto collapsed_num = [&](size_t i) { uint8_t v = t.collapsed[i]; return (v >= '0' && v <= '9') || v == 0xD1; };
    switch (cfg_.pre) {
        case Pre::GPT2:
            apply(gpt2);
            break;
        case Pre::SmolLM:  // \p{N} then GPT-2
            t.collapse();
            apply([&](size_t b, size_t e, std::vector<size_t>& o) { split_class(b, e, collapsed_num, true, o); });
            apply(gpt2);
            break;
        case Pre::Llama3:
            apply([&](size_t b, size_t e, std::vector<size_t>& o) { split_llama3(t, b, e, 3, o); });
            break;
        case Pre::Qwen2:
            apply([&](size_t b, size_t e, std::vector<size_t>& o) { split_llama3(t, b, e, 1, o); });
            break;
        case Pre::Tekken:
            t.collapse();
            apply([&](size_t b, size_t e, std::vector<size_t>& o) { split_tekken(t, b, e, o); });
            break;
        case Pre::Default: {
            // [\p{P}\$\+<=>\^~\|]+ , GPT-2, \p{N}+ , [0-9][0-9][0-9]
            t.collapse();
            auto punct = [&](size_t i) {
                uint8_t v = t.collapsed[i];
                if (v == 0xD3) return true;
                if (v >= 128) return false;
                return (bool)std::strchr("!\"#%&'()*,-./:;?@[\\]_{}$+<=>^~|", v) && v != 0;
            };
            apply([&](size_t b, size_t e, std::vector<size_t>& o) { split_class(b, e, punct, false, o); });
            apply(gpt2);
            apply([&](size_t b, size_t e, std::vector<size_t>& o) { split_class(b, e, collapsed_num, false, o); });
            apply([&](size_t b, size_t e, std::vector<size_t>& o) { split_digit_triples(t, b, e, o); });
            break;
        }
    }
    return segs;
}

std::vector<std::string> Tokenizer::split(std::string_view text) const {
    auto cpts = utf8_to_cpts(text);
    std::vector<std::string> words;
    size_t b = 0;
    for (size_t len : split_offsets(cpts)) {
        std::string w;
        for (size_t i = b; i < b + len; ++i) append_utf8(w, cpts[i]);
        words.push_back(std::move(w));
        b += len;
    }
    return words;
}

// ---------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------

Tokenizer::Tokenizer(Config cfg, std::vector<std::string> tokens, std::vector<uint32_t> attrs,
                     std::vector<float> scores, const std::vector<std::string>& merges)
    : cfg_(cfg), texts_(std::move(tokens)), attrs_(std::move(attrs)), scores_(std::move(scores)) {
    const size_t n = texts_.size();
    if (n == 0) throw Error("tokenizer: the vocabulary is empty");
    if (attrs_.size() != n) throw Error("tokenizer: token attribute count differs from token count");
    if (!scores_.empty() && scores_.size() != n) throw Error("tokenizer: score count differs from token count");
    if (scores_.empty()) scores_.assign(n, 0.0f);
    for (size_t i = 0; i < n; ++i) {
        if (texts_[i].empty()) texts_[i] = "[EMPTY_" + std::to_string(i) + "]";  // as llama.cpp
    }
    token_to_id_.reserve(n * 2);
    for (size_t i = 0; i < n; ++i) token_to_id_[std::string_view(texts_[i])] = (int32_t)i;
    for (int32_t* id : {&cfg_.bos, &cfg_.eos})
        if (*id >= (int32_t)n) *id = -1;

    // Special tokens (control, user-defined, unknown), longest text first: the order in which
    // llama.cpp cuts them out of the raw text. Equal lengths keep id order.
    for (size_t i = 0; i < n; ++i)
        if (attrs_[i] & (TA_CONTROL | TA_USER_DEFINED | TA_UNKNOWN)) special_.push_back((int32_t)i);
    std::stable_sort(special_.begin(), special_.end(),
                     [&](int32_t a, int32_t b) { return texts_[a].size() > texts_[b].size(); });

    if (!cfg_.spm) {
        // Symbol ids: vocab texts keep their token ids; merge parts and results that are not in
        // the vocabulary get ids after them. The first rank of a repeated pair wins.
        sym_id_ = token_to_id_;
        std::vector<std::pair<std::string, std::string>> parts(merges.size());
        for (size_t r = 0; r < merges.size(); ++r) {
            const std::string& m = merges[r];
            size_t sp = m.find(' ', 1);  // a merge is "left right"; the left part may start with ' '
            if (sp != std::string::npos) parts[r] = {m.substr(0, sp), m.substr(sp + 1)};
        }
        // First pass: make every string an id (extra_strings_ must not reallocate under views).
        extra_strings_.reserve(parts.size() * 3);
        auto intern = [&](const std::string& s) -> int32_t {
            auto it = sym_id_.find(s);
            if (it != sym_id_.end()) return it->second;
            extra_strings_.push_back(s);
            int32_t id = (int32_t)(n + extra_strings_.size() - 1);
            sym_id_[std::string_view(extra_strings_.back())] = id;
            return id;
        };
        merges_.reserve(merges.size() * 2);
        for (size_t r = 0; r < parts.size(); ++r) {
            int32_t a = intern(parts[r].first), b = intern(parts[r].second);
            int32_t ab = intern(parts[r].first + parts[r].second);
            uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
            merges_.emplace(key, std::make_pair((int32_t)r, ab));
        }
    }

    pieces_.resize(n);
    for (size_t i = 0; i < n; ++i) pieces_[i] = make_piece((int32_t)i);
}

size_t Tokenizer::check(int32_t id) const {
    if (id < 0 || id >= (int32_t)texts_.size())
        throw Error("token id " + std::to_string(id) + " is out of range (vocabulary has " +
                    std::to_string(texts_.size()) + " tokens)");
    return (size_t)id;
}

static void replace_all(std::string& s, std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(s.size());
    size_t pos = 0;
    for (;;) {
        size_t k = s.find(from, pos);
        if (k == std::string::npos) break;
        out.append(s, pos, k - pos);
        out.append(to);
        pos = k + from.size();
    }
    out.append(s, pos, std::string::npos);
    s.swap(out);
}

static const char* kSpmSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space

// The text a token stands for (llama.cpp's token_to_piece with special = true).
std::string Tokenizer::make_piece(int32_t id) const {
    const std::string& s = texts_[id];
    uint32_t a = attrs_[id];
    if (a & (TA_UNKNOWN | TA_CONTROL | TA_USER_DEFINED)) return s;
    if (a & TA_NORMAL) {
        if (cfg_.spm) {
            std::string r = s;
            replace_all(r, kSpmSpace, " ");
            return r;
        }
        // byte-level BPE: map every char of the token back to its byte
        std::string r;
        for (uint32_t cp : utf8_to_cpts(s)) {
            int b = char_to_byte(cp);
            if (b >= 0) {
                r.push_back((char)b);
            } else {  // not in the byte alphabet: llama.cpp writes this marker
                std::string u;
                append_utf8(u, cp);
                r += "[UNK_BYTE_0x";
                static const char* hex = "0123456789abcdef";
                for (unsigned char ch : u) { r.push_back(hex[ch >> 4]); r.push_back(hex[ch & 15]); }
                r += s + "]";
            }
        }
        return r;
    }
    if (a & TA_BYTE) {  // "<0xAB>"
        if (s.size() >= 6) return std::string(1, (char)std::stoi(s.substr(3, 2), nullptr, 16));
    }
    return "";
}

// ---------------------------------------------------------------------------------------
// Special-token partition: cut the text into raw fragments and special tokens. Each special
// token in turn (longest first) is searched in every remaining raw fragment; its leftmost
// non-overlapping occurrences become token fragments; a control or unknown token's occurrence
// that overlaps a `plain` range stays text.
// ---------------------------------------------------------------------------------------

static bool c_isspace(char ch) {
    return ch == ' ' || (ch >= '\t' && ch <= '\r');
}

static bool overlaps(const Tokenizer::Ranges& rs, size_t lo, size_t hi) {
    for (auto& r : rs)
        if (lo < r.second && r.first < hi) return true;
    return false;
}

void Tokenizer::partition(std::string_view text, bool parse_special, const Ranges& plain,
                          std::vector<Fragment>& frags) const {
    frags.clear();
    if (text.empty()) return;
    frags.push_back({-1, 0, text.size()});
    std::vector<Fragment> next;
    for (int32_t id : special_) {
        uint32_t a = attrs_[id];
        // Without parse_special only user-defined tokens are cut out (control and unknown are not).
        if (!parse_special && (a & (TA_CONTROL | TA_UNKNOWN))) continue;
        std::string_view tt(texts_[id]);
        if (text.find(tt) == std::string_view::npos) continue;  // cheap skip
        const bool keep_plain = !plain.empty() && (a & (TA_CONTROL | TA_UNKNOWN));
        next.clear();
        for (const Fragment& f : frags) {
            if (f.token >= 0) { next.push_back(f); continue; }
            size_t off = f.off, len = f.len, from = off;
            for (;;) {
                size_t m = text.substr(0, off + len).find(tt, from);
                if (m != std::string_view::npos && keep_plain && overlaps(plain, m, m + tt.size())) {
                    from = m + 1;   // inside plain text: not a token, look further
                    continue;
                }
                if (m == std::string_view::npos) {
                    next.push_back({-1, off, len});
                    break;
                }
                if (m > off) {
                    size_t l = m - off;
                    if (a & TA_LSTRIP) while (l > 0 && c_isspace(text[off + l - 1])) --l;
                    if (l > 0) next.push_back({-1, off, l});
                }
                next.push_back({id, 0, 0});
                size_t r_off = m + tt.size();
                if (r_off >= off + len) break;
                size_t r_len = off + len - r_off;
                if (a & TA_RSTRIP) while (r_len > 0 && c_isspace(text[r_off])) { ++r_off; --r_len; }
                if (r_len == 0) break;
                off = from = r_off;
                len = r_len;
            }
        }
        frags.swap(next);
    }
}

// ---------------------------------------------------------------------------------------
// Encode
// ---------------------------------------------------------------------------------------

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool add_eos, bool parse_special,
                                       const Ranges& plain) const {
    std::vector<int32_t> out;
    std::vector<Fragment> frags;
    partition(text, parse_special, plain, frags);
    if (add_bos) {
        if (cfg_.bos < 0) throw Error("tokenizer: BOS requested but the model has no BOS token");
        out.push_back(cfg_.bos);
    }
    bool prev_special = true;  // SPM: a space is prefixed to the first fragment and after specials
    for (const Fragment& f : frags) {
        if (f.token >= 0) {
            out.push_back(f.token);
            prev_special = true;
            continue;
        }
        std::string_view raw = text.substr(f.off, f.len);
        if (cfg_.spm) {
            std::string s;
            if (cfg_.add_space_prefix && prev_special) s = " ";
            s.append(raw);
            replace_all(s, " ", kSpmSpace);
            spm_fragment(s, out);
        } else {
            bpe_fragment(raw, out);
        }
        prev_special = false;
    }
    if (add_eos) {
        if (cfg_.eos < 0) throw Error("tokenizer: EOS requested but the model has no EOS token");
        out.push_back(cfg_.eos);
    }
    return out;
}

void Tokenizer::bpe_fragment(std::string_view text, std::vector<int32_t>& out) const {
    const auto cpts = utf8_to_cpts(text);
    const auto& b2c = byte_to_char();
    // Words repeat a lot in real text; their ids are cached for this call.
    std::unordered_map<std::string, std::vector<int32_t>> cache;
    std::string utf8, word;
    size_t b = 0;
    for (size_t len : split_offsets(cpts)) {
        utf8.clear();
        for (size_t i = b; i < b + len; ++i) append_utf8(utf8, cpts[i]);
        b += len;
        word.clear();
        for (unsigned char ch : utf8) word += b2c[ch];  // byte-level alphabet
        auto it = cache.find(word);
        if (it != cache.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            continue;
        }
        std::vector<int32_t> ids;
        bpe_word(word, ids);
        out.insert(out.end(), ids.begin(), ids.end());
        if (cache.size() < 200000) cache.emplace(word, std::move(ids));
    }
}

namespace {
struct Sym { int32_t prev, next; uint32_t off, n; int32_t id; };
struct Bigram { int32_t rank; int32_t left, right; uint32_t size; int32_t merged; };
struct BigramOrder {  // priority_queue puts the "largest" first: lowest rank, then leftmost
    bool operator()(const Bigram& a, const Bigram& b) const {
        return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
};
}  // namespace

// Byte-level BPE on one pre-token: start from its UTF-8 characters and repeatedly merge the
// adjacent pair with the lowest merge rank (leftmost on ties).
void Tokenizer::bpe_word(const std::string& word, std::vector<int32_t>& out) const {
    if (cfg_.ignore_merges) {
        int32_t id = text_to_token(word);
        if (id >= 0) { out.push_back(id); return; }
    }
    std::vector<Sym> syms;
    for (uint32_t off = 0; off < word.size();) {
        uint32_t n = (uint32_t)std::min(utf8_len((uint8_t)word[off]), word.size() - off);
        int32_t idx = (int32_t)syms.size();
        syms.push_back({idx - 1, off + n == word.size() ? -1 : idx + 1, off, n,
                        sym_id(std::string_view(word).substr(off, n))});
        off += n;
    }
    std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> q;
    auto add = [&](int32_t l, int32_t r) {
        if (l < 0 || r < 0 || syms[l].id < 0 || syms[r].id < 0) return;
        auto it = merges_.find(((uint64_t)(uint32_t)syms[l].id << 32) | (uint32_t)syms[r].id);
        if (it == merges_.end()) return;
        q.push({it->second.first, l, r, syms[l].n + syms[r].n, it->second.second});
    };
    for (int32_t i = 1; i < (int32_t)syms.size(); ++i) add(i - 1, i);
    while (!q.empty()) {
        Bigram bg = q.top();
        q.pop();
        Sym& L = syms[bg.left];
        Sym& R = syms[bg.right];
        // stale: one side was merged since this pair was queued (symbols only ever grow)
        if (L.n == 0 || R.n == 0 || L.n + R.n != bg.size) continue;
        L.n += R.n;
        R.n = 0;
        L.id = bg.merged;
        L.next = R.next;
        if (R.next >= 0) syms[R.next].prev = bg.left;
        add(L.prev, bg.left);
        add(bg.left, L.next);
    }
    for (const Sym& s : syms) {
        if (s.n == 0) continue;
        if (s.id >= 0 && s.id < n_tokens()) { out.push_back(s.id); continue; }
        // not a vocab entry: fall back to the tokens of its single bytes, where they exist
        for (uint32_t i = 0; i < s.n; ++i) {
            int32_t t = text_to_token(std::string_view(word).substr(s.off + i, 1));
            if (t >= 0) out.push_back(t);
        }
    }
}

namespace {
struct SpmBigram { float score; int32_t left, right; uint32_t size; };
struct SpmOrder {  // highest score first, then leftmost
    bool operator()(const SpmBigram& a, const SpmBigram& b) const {
        return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
};
}  // namespace

int32_t Tokenizer::spm_byte_token(uint8_t b) const {
    static const char* hex = "0123456789ABCDEF";
    char buf[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
    int32_t id = text_to_token(std::string_view(buf, 6));
    if (id >= 0) return id;
    id = text_to_token(std::string_view((const char*)&b, 1));
    if (id >= 0) return id;
    throw Error("tokenizer: byte 0x" + std::string(buf + 3, 2) + " has no token (no <0xNN> byte-fallback token)");
}

// SentencePiece as llama.cpp runs it: start from UTF-8 characters; repeatedly merge the
// adjacent pair whose concatenation is a vocabulary entry with the highest score (leftmost
// on ties); characters left that are not entries become byte tokens.
void Tokenizer::spm_fragment(const std::string& text, std::vector<int32_t>& out) const {
    std::vector<Sym> syms;
    for (uint32_t off = 0; off < text.size();) {
        uint32_t n = (uint32_t)std::min(utf8_len((uint8_t)text[off]), text.size() - off);
        int32_t idx = (int32_t)syms.size();
        syms.push_back({idx - 1, off + n == text.size() ? -1 : idx + 1, off, n, -1});
        off += n;
    }
    std::priority_queue<SpmBigram, std::vector<SpmBigram>, SpmOrder> q;
    std::string_view tv(text);
    auto add = [&](int32_t l, int32_t r) {
        if (l < 0 || r < 0) return;
        int32_t id = text_to_token(tv.substr(syms[l].off, syms[l].n + syms[r].n));
        if (id < 0) return;
        q.push({scores_[id], l, r, syms[l].n + syms[r].n});
    };
    for (int32_t i = 1; i < (int32_t)syms.size(); ++i) add(i - 1, i);
    while (!q.empty()) {
        SpmBigram bg = q.top();
        q.pop();
        Sym& L = syms[bg.left];
        Sym& R = syms[bg.right];
        if (L.n == 0 || R.n == 0 || L.n + R.n != bg.size) continue;
        L.n += R.n;
        R.n = 0;
        L.next = R.next;
        if (R.next >= 0) syms[R.next].prev = bg.left;
        add(L.prev, bg.left);
        add(bg.left, L.next);
    }
    if (syms.empty()) return;
    for (int32_t i = 0; i != -1; i = syms[i].next) {
        const Sym& s = syms[i];
        int32_t id = text_to_token(tv.substr(s.off, s.n));
        if (id >= 0) { out.push_back(id); continue; }
        for (uint32_t k = 0; k < s.n; ++k) out.push_back(spm_byte_token((uint8_t)text[s.off + k]));
    }
}

// ---------------------------------------------------------------------------------------
// Decode (llama_detokenize)
// ---------------------------------------------------------------------------------------

std::string Tokenizer::detokenize(const std::vector<int32_t>& ids_in, bool remove_special, bool unparse_special) const {
    size_t first = 0, last = ids_in.size();
    bool remove_space = cfg_.add_space_prefix;  // SPM: drop the prefixed space of the first token
    if (remove_special && cfg_.add_bos && last > first && ids_in[first] == cfg_.bos) {
        remove_space = false;
        ++first;
    }
    if (remove_special && cfg_.add_eos && last > first && ids_in[last - 1] == cfg_.eos) --last;
    std::string text;
    for (size_t i = first; i < last; ++i) {
        int32_t id = ids_in[i];
        size_t k = check(id);
        bool special = attrs_[k] & (TA_UNKNOWN | TA_CONTROL);
        if (special && !unparse_special) { remove_space = false; continue; }
        const std::string& p = pieces_[k];
        size_t skip = (remove_space && !p.empty() && p[0] == ' ') ? 1 : 0;
        text.append(p, skip, std::string::npos);
        remove_space = false;
    }
    if (!cfg_.clean_spaces || text.empty()) return text;
    // llama.cpp's clean_up_tokenization_spaces, three passes over bytes
    std::string t1;
    t1.push_back(text[0]);
    for (size_t i = 1; i < text.size(); ++i) {  // " ?", " !", " .", " ," -> drop the space
        char x = text[i];
        if (text[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) t1.pop_back();
        t1.push_back(x);
    }
    // " ' " -> "'": both spaces go. llama.cpp blanks the dropped space in place, so the byte
    // after it no longer sees a space before it; `src` keeps that behaviour.
    std::string src = t1, t2;
    t2.push_back(src[0]);
    for (size_t i = 1; i < src.size(); ++i) {
        char x = src[i];
        if (x == '\'' && i + 1 < src.size() && src[i - 1] == ' ' && src[i + 1] == ' ') {
            t2.pop_back();
            src[++i] = '\0';
        }
        t2.push_back(x);
    }
    std::string t3;
    t3.push_back(t2[0]);
    for (size_t i = 1; i < t2.size(); ++i) {  // " 's", " 'm", " 're", " 've" -> no space
        char x = t2[i];
        if (t2[i - 1] == ' ' && x == '\'' && i + 1 < t2.size()) {
            char x1 = t2[i + 1];
            if (x1 == 's' || x1 == 'm') t3.pop_back();
            else if (i + 2 < t2.size()) {
                char x2 = t2[i + 2];
                if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) t3.pop_back();
            }
        }
        t3.push_back(x);
    }
    return t3;
}

}  // namespace tok
}  // namespace llmetal
