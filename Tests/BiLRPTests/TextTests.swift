import BiLRP
import BiLRPText
import Foundation
import Testing

/// The fetched all-MiniLM-L6-v2 folder (scripts/fetch-assets.sh).
let miniLMDirectory = assetsDirectory + "/models/all-MiniLM-L6-v2"
let haveMiniLM = FileManager.default.fileExists(atPath: miniLMDirectory + "/model.safetensors")

/// Cases written by scripts/make-text-fixtures.py with Hugging Face `tokenizers`.
private struct TokenizerCases: Decodable {
    struct Case: Decodable {
        let text: String
        let ids: [Int]
        let offsets: [[Int]]
        let max_length: Int?
    }
    let tokenizers_version: String
    let cases: [Case]
    let truncated: [Case]

    static func load() throws -> TokenizerCases {
        let data = try Data(contentsOf: URL(fileURLWithPath: fixturePath("text/tokenizer_cases.json")))
        return try JSONDecoder().decode(TokenizerCases.self, from: data)
    }
}

@Suite("WordPiece tokenizer against Hugging Face tokenizers")
struct TokenizerTests {
    @Test("ids and character spans of 235 sentences (accents, punctuation, numbers, emoji, CJK, long words, control characters)",
          .enabled(if: haveMiniLM))
    func sameAsHuggingFace() throws {
        let tok = try WordPieceTokenizer.load(directory: miniLMDirectory)
        let fixture = try TokenizerCases.load()
        #expect(fixture.cases.count >= 200)
        var mismatches = 0
        for c in fixture.cases {
            let e = tok.encode(c.text)
            let spans = e.tokens.map { [$0.span.lowerBound, $0.span.upperBound] }
            if e.ids != c.ids || spans != c.offsets {
                mismatches += 1
                if mismatches <= 5 {
                    Issue.record("\(c.text.debugDescription):\n ours \(e.tokens.map(\.text)) \(spans)\n hf   \(c.ids) \(c.offsets)")
                }
            }
            #expect(e.truncatedPieces == 0)
        }
        #expect(mismatches == 0, "\(mismatches) of \(fixture.cases.count) sentences differ from tokenizers \(fixture.tokenizers_version)")
    }

    @Test("truncation keeps [CLS], the first pieces and [SEP], and counts what it dropped", .enabled(if: haveMiniLM))
    func truncation() throws {
        let tok = try WordPieceTokenizer.load(directory: miniLMDirectory)
        for c in try TokenizerCases.load().truncated {
            let e = tok.encode(c.text, maxLength: c.max_length!)
            #expect(e.ids == c.ids, "\(c.text)")
            #expect(e.tokens.map { [$0.span.lowerBound, $0.span.upperBound] } == c.offsets)
            #expect(e.truncatedPieces == tok.encode(c.text).tokens.count - c.ids.count)
            #expect(e.truncatedPieces > 0)
        }
    }

    @Test("spans give back the original text of each piece")
    func spans() throws {
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cafe", "na", "##ive", ",", "ok", "中"]
        let tok = try WordPieceTokenizer(vocabulary: vocab)
        let e = tok.encode("Café,  NAÏVE 中 ok?")
        #expect(e.tokens.map(\.text) == ["[CLS]", "cafe", ",", "na", "##ive", "中", "ok", "[UNK]", "[SEP]"])
        #expect(e.tokens.dropFirst().dropLast().map { e.substring(of: $0) } == ["Café", ",", "NA", "ÏVE", "中", "ok", "?"])
    }

    @Test("a decomposed Hangul syllable is not looked up as the precomposed vocabulary entry")
    func bytewiseVocabulary() throws {
        // "한" is in this vocabulary precomposed (U+D55C); normalization decomposes it into three jamo,
        // which Swift's String equality would still call equal.
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "\u{D55C}", "\u{1112}", "##\u{1161}", "##\u{11AB}"]
        let e = try WordPieceTokenizer(vocabulary: vocab).encode("\u{D55C}")
        #expect(e.ids == [2, 5, 6, 7, 3])
    }

    @Test("a vocabulary without [CLS], or a tokenizer.json of another kind, is an error naming it")
    func badTokenizers() throws {
        #expect(throws: BiLRPError.invalidArgument("tokenizer: the vocabulary has no token '[CLS]'")) {
            try WordPieceTokenizer(vocabulary: ["[PAD]", "[UNK]", "[SEP]"])
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bilrp-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(throws: BiLRPError.io("tokenizer: cannot read '\(dir.path)/vocab.txt' (a BERT model folder has its WordPiece vocabulary there)")) {
            try WordPieceTokenizer.load(directory: dir.path)
        }
        try "[PAD]\n[UNK]\n[CLS]\n[SEP]\n".write(to: dir.appendingPathComponent("vocab.txt"), atomically: true, encoding: .utf8)
        try #"{"model": {"type": "BPE"}, "normalizer": null, "pre_tokenizer": {"type": "ByteLevel"}}"#
            .write(to: dir.appendingPathComponent("tokenizer.json"), atomically: true, encoding: .utf8)
        #expect(throws: BiLRPError.unsupported("tokenizer.json: model type 'BPE'; supported: WordPiece (BERT)")) {
            try WordPieceTokenizer.load(directory: dir.path)
        }
    }
}
