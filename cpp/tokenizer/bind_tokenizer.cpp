// bind_tokenizer.cpp -- exposes tok::Tokenizer to Python as llmetal._engine.Tokenizer.
// Text crosses the boundary as bytes (UTF-8), so invalid input is handled exactly as in
// llama.cpp instead of being rejected by Python's codec.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

#include "engine.h"
#include "tokenizer/tokenizer.h"

namespace nb = nanobind;
using llmetal::tok::Config;
using llmetal::tok::Pre;
using llmetal::tok::Tokenizer;

static Pre pre_from_name(const std::string& s) {
    if (s == "default") return Pre::Default;
    if (s == "gpt2") return Pre::GPT2;
    if (s == "smollm") return Pre::SmolLM;
    if (s == "llama3") return Pre::Llama3;
    if (s == "qwen2") return Pre::Qwen2;
    if (s == "tekken") return Pre::Tekken;
    throw llmetal::Error("tokenizer: unknown pre-tokenizer family '" + s + "'");
}

static std::string_view as_view(const nb::bytes& b) { return std::string_view(b.c_str(), b.size()); }

void bind_tokenizer(nb::module_& m) {
    nb::class_<Tokenizer>(m, "Tokenizer")
        .def("__init__",
             [](Tokenizer* self, const std::string& model, const std::string& pre, std::vector<nb::bytes> tokens,
                std::vector<uint32_t> attrs, std::vector<float> scores, std::vector<nb::bytes> merges, int bos,
                int eos, bool add_bos, bool add_eos, bool add_space_prefix, bool ignore_merges, bool clean_spaces) {
                 Config c;
                 if (model == "spm") c.spm = true;
                 else if (model != "bpe") throw llmetal::Error("tokenizer: model must be 'bpe' or 'spm', got '" + model + "'");
                 c.pre = pre_from_name(pre);
                 c.bos = bos; c.eos = eos;
                 c.add_bos = add_bos; c.add_eos = add_eos;
                 c.add_space_prefix = add_space_prefix;
                 c.ignore_merges = ignore_merges;
                 c.clean_spaces = clean_spaces;
                 std::vector<std::string> t;
                 t.reserve(tokens.size());
                 for (auto& b : tokens) t.emplace_back(b.c_str(), b.size());
                 std::vector<std::string> mg;
                 mg.reserve(merges.size());
                 for (auto& b : merges) mg.emplace_back(b.c_str(), b.size());
                 new (self) Tokenizer(c, std::move(t), std::move(attrs), std::move(scores), mg);
             },
             nb::arg("model"), nb::arg("pre"), nb::arg("tokens"), nb::arg("attrs"), nb::arg("scores"),
             nb::arg("merges"), nb::arg("bos"), nb::arg("eos"), nb::arg("add_bos"), nb::arg("add_eos"),
             nb::arg("add_space_prefix"), nb::arg("ignore_merges"), nb::arg("clean_spaces"),
             "Build from a finished vocabulary (python/llmetal/tokenizer.py reads it from the GGUF).")
        .def("encode",
             [](const Tokenizer& t, nb::bytes text, bool add_bos, bool add_eos, bool parse_special,
                const Tokenizer::Ranges& plain) {
                 for (auto& r : plain)
                     if (r.first > r.second || r.second > text.size())
                         throw llmetal::Error("tokenizer: a plain range lies outside the text");
                 return t.encode(as_view(text), add_bos, add_eos, parse_special, plain);
             },
             nb::arg("text"), nb::arg("add_bos"), nb::arg("add_eos"), nb::arg("parse_special"),
             nb::arg("plain") = Tokenizer::Ranges{},
             "Token ids; control tokens are not parsed inside the `plain` byte ranges [(lo, hi), ...].")
        .def("detokenize",
             [](const Tokenizer& t, const std::vector<int32_t>& ids, bool remove_special, bool unparse_special) {
                 std::string s = t.detokenize(ids, remove_special, unparse_special);
                 return nb::bytes(s.data(), s.size());
             },
             nb::arg("ids"), nb::arg("remove_special") = false, nb::arg("unparse_special") = false)
        .def("piece", [](const Tokenizer& t, int32_t id) {
                 const std::string& s = t.piece(id);
                 return nb::bytes(s.data(), s.size());
             }, "The bytes a token stands for (control tokens included).")
        .def("pieces", [](const Tokenizer& t) {
                 nb::list out;
                 for (int32_t i = 0; i < t.n_tokens(); ++i) {
                     const std::string& s = t.piece(i);
                     out.append(nb::bytes(s.data(), s.size()));
                 }
                 return out;
             }, "Every token's piece, as a list of bytes.")
        .def("split", [](const Tokenizer& t, nb::bytes text) {
                 nb::list out;
                 for (auto& w : t.split(as_view(text))) out.append(nb::bytes(w.data(), w.size()));
                 return out;
             }, "The pre-tokenizer's pieces of raw text (no special tokens, no byte encoding).")
        .def("text", [](const Tokenizer& t, int32_t id) {
                 const std::string& s = t.text(id);
                 return nb::bytes(s.data(), s.size());
             })
        .def("attr", &Tokenizer::attr)
        .def("text_to_token", [](const Tokenizer& t, nb::bytes s) { return t.text_to_token(as_view(s)); })
        .def_prop_ro("n_tokens", &Tokenizer::n_tokens);
}
