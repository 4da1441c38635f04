import BiLRP
import BiLRPIO
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

/// Written by scripts/make-text-fixtures.py with Hugging Face `transformers` and an independent
/// PyTorch BERT (detached LayerNorm sigma, attention weights and gelu(z) / z).
private struct MiniLMFixture: Decodable {
    struct Sentence: Decodable { let text: String; let ids: [Int] }
    let max_length: Int
    struct Pair: Decodable { let first: String; let second: String; let max_length: Int; let ids: [[Int]] }
    let embeddings: [Sentence]
    let relevance: [Sentence]
    let pairs: [Pair]
    static func load() throws -> (MiniLMFixture, SafetensorsFile) {
        let data = try Data(contentsOf: URL(fileURLWithPath: fixturePath("text/minilm.json")))
        return (try JSONDecoder().decode(MiniLMFixture.self, from: data), try SafetensorsFile(path: fixturePath("text/minilm.safetensors")))
    }
}

@Suite("BERT sentence encoder (all-MiniLM-L6-v2) against Hugging Face transformers and PyTorch", .enabled(if: haveMiniLM))
struct SentenceEncoderTests {
    /// Loaded once for the suite (the error, if any, reported by every test that uses it).
    static let loaded = Result { try SentenceEncoder.load(directory: miniLMDirectory) }

    func explainer(_ e: SentenceEncoder) throws -> Explainer {
        try Explainer(graph: e.graph, head: .identity, similarity: .cosine, composite: try .named("*:zero"))
    }

    @Test("the folder's configuration: mean pooling, 256 tokens, normalized, 6 layers of 12 heads on 384 features")
    func configuration() throws {
        let e = try SentenceEncoder.load(directory: miniLMDirectory)
        #expect(e.pooling == .mean && e.maxLength == 256 && e.normalizes)
        #expect(e.config.layers == 6 && e.config.heads == 12 && e.config.hiddenSize == 384 && e.config.intermediateSize == 1536)
    }

    @Test("token ids and mean-pooled embeddings equal transformers' (padded batch with its mask) within 1e-4, a truncated text too")
    func embeddings() throws {
        let e = try Self.loaded.get()
        let (fx, f) = try MiniLMFixture.load()
        let ex = try explainer(e)
        var cosines: [(Double, Double)] = []
        var ours: [[Float]] = [], theirs: [[Float]] = []
        for (i, s) in fx.embeddings.enumerated() {
            let tokens = try e.tokenize(s.text)
            #expect(tokens.ids == s.ids, "ids of sentence \(i)")
            let phi = try ex.embedding(try e.inputEmbeddings(tokens))
            let ref = try f.t("embedding.\(i)").data
            expectClose(phi, ref, tol: 1e-4, "embedding of sentence \(i)")
            ours.append(phi); theirs.append(ref)
        }
        #expect(try e.tokenize(fx.embeddings.last!.text).truncatedPieces > 0)
        for i in 0..<ours.count { for j in (i + 1)..<ours.count {
            cosines.append((Similarity.cosine.dotAndScale(ours[i], ours[j]).0 * Similarity.cosine.dotAndScale(ours[i], ours[j]).1,
                            Similarity.cosine.dotAndScale(theirs[i], theirs[j]).0 * Similarity.cosine.dotAndScale(theirs[i], theirs[j]).1))
        } }
        for (a, b) in cosines { #expect(abs(a - b) <= 1e-5, "cosine \(a) vs \(b)") }
    }

    @Test("cp-lrp relevance at the input embeddings equals PyTorch's detached gradient x input within 1e-4 of max |R|")
    func relevance() throws {
        let e = try Self.loaded.get()
        let (fx, f) = try MiniLMFixture.load()
        let ex = try explainer(e)
        for (j, s) in fx.relevance.enumerated() {
            let x = try e.inputEmbeddings(try e.tokenize(s.text))
            #expect(x.shape == [s.ids.count, 384])
            expectClose(x.data, try f.t("relevance.\(j).input").data, tol: 1e-6, "input embeddings \(j)")
            let phi = try ex.embedding(x)
            expectClose(phi, try f.t("relevance.\(j).phi").data, tol: 1e-4, "phi \(j)")
            let c = try f.t("relevance.\(j).c").data
            let R = try ex.relevance(x, outputRelevance: zip(c, phi).map { $0 * $1 })
            expectClose(R.data, try f.t("relevance.\(j).R").data, tol: 1e-4, "R \(j)")
        }
    }

    @Test("cp-lrp token-pair matrices (cosine) equal PyTorch's within 1e-4 of max |R|: A of both texts, R, y; one pair truncated at 16 tokens")
    func tokenPairs() throws {
        let e0 = try Self.loaded.get()
        let (fx, f) = try MiniLMFixture.load()
        for (j, p) in fx.pairs.enumerated() {
            let e = try e0.truncating(at: p.max_length)
            let ex = try TextExplainer(encoder: e)
            let (a, b) = (try ex.factors(p.first), try ex.factors(p.second))
            #expect(a.text.ids == p.ids[0] && b.text.ids == p.ids[1], "ids of pair \(j)")
            #expect((j == 2) == (a.text.truncatedPieces > 0))
            expectClose(a.factors.a, try f.t("pair.\(j).A1").data, tol: 1e-4, "A of the first text of pair \(j)")
            expectClose(b.factors.a, try f.t("pair.\(j).A2").data, tol: 1e-4, "A of the second text of pair \(j)")
            let pair = try ex.explain(a, b)
            expectClose(pair.pair.relevance, try f.t("pair.\(j).R").data, tol: 1e-4, "R of pair \(j)")
            #expect(abs(pair.pair.similarity - (try f.t("pair.\(j).cosine").data[0])) <= 1e-5)
        }
    }

    @Test("the token side (P functionals up) and the backward (h maps down) give the same factors, on single tokens and on runs of 3")
    func tokenSideEqualsBackward() throws {
        let e = try Self.loaded.get()
        let up = try TextExplainer(encoder: e, kernels: CKernelsBackend(patchSideLayers: nil)).explainer
        let down = try TextExplainer(encoder: e, kernels: CKernelsBackend(patchSideLayers: 0)).explainer
        let x = try e.inputEmbeddings(try e.tokenize("Forgot your password? Click 'reset' and follow the e-mail's instructions!"))
        for patch in [1, 3] {
            let (a, b) = (try up.factors(x, patch: patch), try down.factors(x, patch: patch))
            #expect(a.grid.count == (x.shape[0] + patch - 1) / patch)
            expectClose(a.a, b.a, tol: 1e-5, "A at patch \(patch)")
        }
    }

    @Test("hp (true gradients through LayerNorm, GELU, attention) equals PyTorch's undetached gradient x input per feature within 1e-4")
    func hpMaps() throws {
        let e = try Self.loaded.get()
        let (fx, f) = try MiniLMFixture.load()
        let ex = try TextExplainer(encoder: e, rules: "hp").explainer
        #expect(ex.nodeRules["encoder.layer.0.attention.self"] == .gradient && ex.nodeRules["encoder.layer.0.output.dense"] == .zero)
        for (j, s) in fx.relevance.enumerated() {
            let x = try e.inputEmbeddings(try e.tokenize(s.text))
            let phi = try ex.embedding(x)
            let c = try f.t("relevance.\(j).c").data
            let R = try ex.relevance(x, outputRelevance: zip(c, phi).map { $0 * $1 })
            expectClose(R.data, try f.t("hp.relevance.\(j).R").data, tol: 1e-4, "hp map \(j)")
        }
    }

    @Test("hp's token pairs vanish, as PyTorch's double-backward Hessian x Product does: the embedding LayerNorm is scale invariant per token")
    func hpTokenPairsVanish() throws {
        let e = try Self.loaded.get()
        let (fx, f) = try MiniLMFixture.load()
        let p = fx.pairs[0]
        let hp = try TextExplainer(encoder: e, rules: "hp", similarity: .dot).explain(p.first, p.second)
        let cp = try TextExplainer(encoder: e, rules: "cp-lrp", similarity: .dot).explain(p.first, p.second)
        let torch = try f.t("hp.pair.R").data
        let scale = cp.pair.relevance.map(abs).max()!
        #expect(torch.map(abs).max()! <= 1e-9 * scale)
        #expect(hp.pair.relevance.map(abs).max()! <= 1e-4 * scale, "hp token pairs: \(hp.pair.relevance.map(abs).max()!) vs cp-lrp \(scale)")
    }

    @Test("the gradient rule on a linear layer is refused, naming the node")
    func gradientOnLinear() throws {
        #expect(throws: BiLRPError.invalidComposite(
            "rule gradient at node 'encoder.layer.0.attention.self.query' (Linear(384, 384)) is for LayerNorm, GELU and attention nodes only")) {
            try TextExplainer(encoder: try Self.loaded.get(), rules: "linear:gradient")
        }
    }

    @Test("conservation with every bias (and LayerNorm shift) zero: |sum R - y| <= 1e-4 |y| over token pairs")
    func conservation() throws {
        let dir = URL(fileURLWithPath: miniLMDirectory)
        let w = try SafetensorsFile(path: dir.appendingPathComponent("model.safetensors").path)
        var tensors: [String: Tensor] = [:]
        for name in w.names {
            var t = try w.tensor(named: name)!
            if name.hasSuffix(".bias") { t.data = [Float](repeating: 0, count: t.count) }
            tensors[name] = t
        }
        let e0 = try Self.loaded.get()
        let e = try SentenceEncoder(config: e0.config, tokenizer: e0.tokenizer, pooling: .mean, maxLength: 256, normalizes: true,
                                    weights: try SafetensorsFile(data: try SafetensorsFile.encode(tensors)))
        let ex = try explainer(e)
        let texts = ["A man is riding a white horse on an enclosed ground.", "Which words of the query matched?"]
        let (x1, x2) = (try e.inputEmbeddings(try e.tokenize(texts[0])), try e.inputEmbeddings(try e.tokenize(texts[1])))
        // Token pairs (patch 1): R = A(x) A(x')^T scaled for the cosine; its sum is the cosine.
        let pair = try ex.explain(x1, x2, patch: 1)
        #expect(pair.relevance.count == 14 * 9)
        let total = pair.relevance.reduce(0.0) { $0 + Double($1) }
        #expect(abs(total - Double(pair.similarity)) <= 1e-4 * abs(Double(pair.similarity)), "sum R \(total) vs cosine \(pair.similarity)")
        // One first-order map: its sum is the output relevance's.
        let phi = try ex.embedding(x1)
        let R = try ex.relevance(x1, outputRelevance: phi)
        let y = phi.reduce(0.0) { $0 + Double($1) }, sum = R.data.reduce(0.0) { $0 + Double($1) }
        #expect(abs(sum - y) <= 1e-4 * abs(y), "sum R \(sum) vs sum phi \(y)")
    }

    @Test("empty and whitespace-only texts are errors that say so")
    func badTexts() throws {
        let e = try Self.loaded.get()
        #expect(throws: BiLRPError.invalidArgument("the text is empty")) { try e.tokenize("") }
        #expect(throws: BiLRPError.invalidArgument("the text has no tokens: it is only white space or control characters")) {
            try e.tokenize(" \t\n\u{0007}\u{200B} ")
        }
    }

    @Test("a model folder with a missing or mis-shaped tensor, or a config that is not BERT: errors naming it")
    func badFolders() throws {
        let src = URL(fileURLWithPath: miniLMDirectory)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bilrp-bert-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for name in ["vocab.txt", "tokenizer.json", "config.json"] {
            try FileManager.default.copyItem(at: src.appendingPathComponent(name), to: dir.appendingPathComponent(name))
        }
        let w = try SafetensorsFile(path: src.appendingPathComponent("model.safetensors").path)
        var tensors: [String: Tensor] = [:]
        for name in w.names { tensors[name] = try w.tensor(named: name)! }
        let path = dir.appendingPathComponent("model.safetensors").path
        var missing = tensors
        missing["encoder.layer.3.attention.self.key.weight"] = nil
        try SafetensorsFile.write(missing, to: path)
        #expect(throws: BiLRPError.missingTensor("encoder.layer.3.attention.self.key.weight")) {
            try SentenceEncoder.load(directory: dir.path)
        }
        var wrong = tensors
        wrong["encoder.layer.0.intermediate.dense.bias"] = Tensor(zeros: [1535])
        try SafetensorsFile.write(wrong, to: path)
        #expect(throws: BiLRPError.shapeMismatch(what: "tensor 'encoder.layer.0.intermediate.dense.bias' in '\(path)'",
                                                 expected: "[1536]", found: "[1535]")) {
            try SentenceEncoder.load(directory: dir.path)
        }
        try #"{"model_type": "roberta", "hidden_size": 384}"#.write(to: dir.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        #expect(throws: BiLRPError.unsupported("\(dir.path)/config.json: model_type 'roberta'; supported: bert (BERT-family sentence encoders)")) {
            try SentenceEncoder.load(directory: dir.path)
        }
    }
}

@Suite("bilrp explain-text", .enabled(if: haveMiniLM))
struct ExplainTextCLITests {
    @Test("JSON and NPY of a pair: the library's tokens, R and top pairs")
    func jsonAndNPY() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let (t1, t2) = ("A man is eating food.", "A man is eating a piece of bread.")
        let r = try runBilrp(["explain-text", t1, t2, "--model", miniLMDirectory, "--json", dir.path + "/r.json",
                              "--npy", dir.path + "/r.npy", "--top", "3", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        let ex = try TextExplainer(encoder: try SentenceEncoderTests.loaded.get())
        let e = try ex.explain(t1, t2)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("r.json"))) as! [String: Any]
        let inputs = json["inputs"] as! [[String: Any]]
        #expect((inputs[0]["tokens"] as! [[String: Any]]).map { $0["token"] as! String } == e.first.tokens.map(\.text))
        #expect((inputs[1]["text"] as! String) == t2)
        let top = json["top_positive"] as! [[String: Any]]
        #expect(top.count == 3)
        let first = top[0]["first"] as! [String: Any], second = top[0]["second"] as! [String: Any]
        let best = e.top(1)[0]
        #expect(first["index"] as! Int == best.first.index && second["index"] as! Int == best.second.index)
        #expect(first["text"] as! String == best.first.text && first["span"] as! [Int] == best.first.span)
        let R = try NPY.read(path: dir.path + "/r.npy")
        #expect(R.shape == [e.first.tokens.count, e.second.tokens.count])
        expectClose(R.data, e.pair.relevance, tol: 1e-6, "R from the CLI")
        #expect(r.stdout.hasPrefix("similarity 0.7553"), "\(r.stdout)")
    }

    @Test("the pictures: the pair picture draws the strongest pair's curve in full red, the matrix its cell the reddest")
    func pictures() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let (t1, t2) = ("How do I reset my password?", "Forgot your password? Click 'reset' and follow the e-mail's instructions.")
        let r = try runBilrp(["explain-text", t1, t2, "--model", miniLMDirectory, "--out", dir.path + "/pair.png",
                              "--matrix", dir.path + "/matrix.png", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        let pair = try RGBImage.load(path: dir.path + "/pair.png"), matrix = try RGBImage.load(path: dir.path + "/matrix.png")
        func reds(_ img: RGBImage, rows: Range<Int>? = nil) -> [Float] {
            let r = rows ?? 0..<img.height
            return (r.lowerBound * img.width..<r.upperBound * img.width).map { i in
                img.pixels[3 * i] - max(img.pixels[3 * i + 1], img.pixels[3 * i + 2])
            }
        }
        #expect(pair.width == 960 && matrix.width >= 480)
        // In the band between the two lines of tokens (one line each above it) only curves are
        // drawn; the strongest pair's (opacity 1) is the picture's red (0.8, 0, 0).
        #expect(reds(pair, rows: 70..<210).max()! >= 0.75)
        // The matrix: the reddest cell is at full scale (the top pair is far above the others).
        #expect(reds(matrix).max()! >= 0.95)
    }

    @Test("an empty text, a file that is not UTF-8, and the gradient rule on linear layers: exit 1 with the reason")
    func errors() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let bad = dir.appendingPathComponent("latin1.txt")
        try Data([0x63, 0x61, 0x66, 0xE9, 0x20, 0xFF]).write(to: bad)
        let ok = dir.appendingPathComponent("ok.txt")
        try "fine".write(to: ok, atomically: true, encoding: .utf8)
        let cases: [([String], String)] = [
            (["", "text"], "bilrp: error: the text is empty"),
            ([" \t ", "text"], "bilrp: error: the text has no tokens: it is only white space or control characters"),
            (["--file", ok.path, bad.path], "bilrp: error: '\(bad.path)' is not valid UTF-8 text"),
            (["a", "b", "--rules", "attention:gradient;linear:gradient"], "bilrp: error: invalid rule composite: rule gradient at node"),
        ]
        for (args, message) in cases {
            let r = try runBilrp(["explain-text"] + args + ["--model", miniLMDirectory, "--quiet"])
            #expect(r.status == 1, "\(args)")
            #expect(r.stderr.hasPrefix(message), "\(r.stderr)")
        }
    }
}
