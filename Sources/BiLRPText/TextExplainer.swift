import BiLRP
import BiLRPIO
import Foundation

/// The relevance factors of one text: its tokens and A (T x h), row t the relevance of token t
/// (summed over the embedding features) for each of the h embedding dimensions.
public struct TextFactors: Sendable {
    public let text: EncodedText
    public let factors: RelevanceFactors
}

/// One token of a top pair.
public struct TokenRef: Sendable, Codable, Equatable {
    public var index: Int
    public var token: String
    /// The original text it covers ("" for [CLS] and [SEP]).
    public var text: String
    /// Code-point span in the original text (0..<0 for [CLS] and [SEP]).
    public var span: [Int]
}

/// BiLRP of a text pair: R over token pairs, R = A(x) A(x')^T (scaled for the cosine).
public struct TextPairExplanation: Sendable {
    public let pair: PairExplanation
    public let first: EncodedText
    public let second: EncodedText

    /// R[i, j], token i of the first text with token j of the second.
    public func relevance(_ i: Int, _ j: Int) -> Float { pair.relevance[i * second.tokens.count + j] }

    /// The k token pairs of largest R (descending), or of most negative R (`positive: false`).
    public func top(_ k: Int, positive: Bool = true) -> [(value: Float, first: TokenRef, second: TokenRef)] {
        let q = second.tokens.count
        let order = pair.relevance.indices.filter { positive ? pair.relevance[$0] > 0 : pair.relevance[$0] < 0 }
            .sorted { positive ? pair.relevance[$0] > pair.relevance[$1] : pair.relevance[$0] < pair.relevance[$1] }
        return order.prefix(k).map { idx in
            (pair.relevance[idx], Self.ref(first, idx / q), Self.ref(second, idx % q))
        }
    }

    /// R as a T1 x T2 tensor (what `--npy` writes).
    public func relevanceTensor() throws -> Tensor {
        try Tensor(shape: [first.tokens.count, second.tokens.count], data: pair.relevance)
    }

    /// Per token of each text, the sum of its row (column) of R: the first-order view.
    public var marginals: (first: [Float], second: [Float]) {
        let p = first.tokens.count, q = second.tokens.count
        var a = [Float](repeating: 0, count: p), b = [Float](repeating: 0, count: q)
        for i in 0..<p { for j in 0..<q { a[i] += pair.relevance[i * q + j]; b[j] += pair.relevance[i * q + j] } }
        return (a, b)
    }

    static func ref(_ e: EncodedText, _ i: Int) -> TokenRef {
        let t = e.tokens[i]
        return TokenRef(index: i, token: t.text, text: e.substring(of: t), span: [t.span.lowerBound, t.span.upperBound])
    }
}

/// Explains the similarity of two texts under a sentence encoder, token pair by token pair.
///
/// ```swift
/// let ex = try TextExplainer(encoder: try SentenceEncoder.load(directory: "assets/models/all-MiniLM-L6-v2"))
/// let e = try ex.explain("A man is eating food.", "A man is eating a piece of bread.")
/// print(e.pair.similarity, e.top(3).map { "\($0.first.text) ~ \($0.second.text)" })
/// ```
public final class TextExplainer: Sendable {
    /// The rule presets for transformers: `cp-lrp`, the conservative propagation of Ali et al. (2022):
    /// LRP-0 on the linear layers, LayerNorm with sigma constant, GELU identity, attention weights
    /// constant; `hp`, the Hessian x Product: the true gradients through LayerNorm, GELU and
    /// attention, LRP-0 (gradient x input) on the linear layers. A composite string selects others.
    public static let presets = ["cp-lrp": "*:zero", "hp": "layernorm:gradient;gelu:gradient;attention:gradient;*:zero"]

    public let encoder: SentenceEncoder
    public let explainer: Explainer
    public let rules: String

    /// `similarity` nil: cosine when the model normalizes its embeddings, else dot.
    public init(encoder: SentenceEncoder, rules: String = "cp-lrp", similarity: Similarity? = nil,
                kernels: any Kernels = CKernelsBackend(), limits: ResourceLimits = .default) throws {
        let composite = try Composite.named(Self.presets[rules] ?? rules)
        self.encoder = encoder
        self.rules = rules
        self.explainer = try Explainer(graph: encoder.graph, head: .identity,
                                       similarity: similarity ?? (encoder.normalizes ? .cosine : .dot),
                                       composite: composite, kernels: kernels, limits: limits)
    }

    /// The embedding of a text (before normalization).
    public func embedding(_ text: String) throws -> [Float] {
        try explainer.embedding(try encoder.inputEmbeddings(try encoder.tokenize(text)))
    }

    public func factors(_ text: String, cancellation: Cancellation? = nil) throws -> TextFactors {
        try factors(try encoder.tokenize(text), cancellation: cancellation)
    }

    /// The factors of a text already tokenized (`encoder.tokenize`).
    public func factors(_ e: EncodedText, cancellation: Cancellation? = nil) throws -> TextFactors {
        TextFactors(text: e, factors: try explainer.factors(try encoder.inputEmbeddings(e), patch: 1, cancellation: cancellation))
    }

    public func explain(_ a: TextFactors, _ b: TextFactors) throws -> TextPairExplanation {
        TextPairExplanation(pair: try explainer.explain(a.factors, b.factors), first: a.text, second: b.text)
    }

    public func explain(_ a: String, _ b: String) throws -> TextPairExplanation {
        try explain(try factors(a), try factors(b))
    }

    /// What a reader of an explanation should know: hp's vanishing token pairs, truncated texts.
    public func notes(_ e: TextPairExplanation) -> [String] {
        var notes: [String] = []
        if rules == "hp" {
            notes.append("under hp a BERT encoder's token relevance sums to about 0 per token (its embedding LayerNorm is scale invariant per token), so the token pairs carry no signal; cp-lrp is the rule set for token pairs")
        }
        for (name, t) in [("first", e.first), ("second", e.second)] where t.truncatedPieces > 0 {
            notes.append("the \(name) text was truncated at \(encoder.maxLength) tokens (\(t.truncatedPieces) word pieces dropped)")
        }
        return notes
    }

    /// What the token pictures of an explanation draw, captioned with the model, rules, similarity and h.
    public func figure(_ e: TextPairExplanation, source: String) -> TokenPairFigure {
        e.figure(setup: "\(source) · \(rules) · \(explainer.similarity.rawValue) · h = \(e.pair.first.outputs)")
    }
}

/// The JSON document of a text pair explanation (`bilrp explain-text --json`): as the image report,
/// with the tokens in place of patch rectangles.
public struct TextExplanationReport: Codable, Sendable {
    public struct ModelInfo: Codable, Sendable {
        public var source: String
        public var layers: Int
        public var outputs: Int
        public var similarity: String
        public var rules: String
        public var max_length: Int
    }
    public struct Token: Codable, Sendable {
        public var id: Int
        public var token: String
        public var span: [Int]
    }
    public struct Input: Codable, Sendable {
        public var text: String
        public var tokens: [Token]
        public var truncated_pieces: Int
        /// Each token's row (column) sum of R.
        public var marginals: [Float]
    }
    public struct Pair: Codable, Sendable {
        public var value: Float
        public var first: TokenRef
        public var second: TokenRef
    }

    public var similarity: Float
    public var dot: Float
    public var conservation: ConservationReport
    public var model: ModelInfo
    public var inputs: [Input]
    public var matrix_layout: String
    public var top_positive: [Pair]
    public var top_negative: [Pair]
    public var timings: [String: Double]
    /// What a reader should know (see `TextExplainer.notes`).
    public var notes: [String]
    /// Server answers only (when asked for): the two pictures and R as base64 PNG and NPY.
    public var pair_png: String? = nil
    public var matrix_png: String? = nil
    public var matrix_npy: String? = nil

    public init(_ e: TextPairExplanation, explainer: TextExplainer, source: String, top: Int, timings: [String: Double]) {
        similarity = e.pair.similarity
        dot = e.pair.dot
        conservation = e.pair.conservation
        model = ModelInfo(source: source, layers: explainer.encoder.config.layers, outputs: e.pair.first.outputs,
                          similarity: explainer.explainer.similarity.rawValue, rules: explainer.rules,
                          max_length: explainer.encoder.maxLength)
        let m = e.marginals
        func input(_ t: EncodedText, _ marginals: [Float]) -> Input {
            Input(text: t.text, tokens: t.tokens.map { Token(id: $0.id, token: $0.text, span: [$0.span.lowerBound, $0.span.upperBound]) },
                  truncated_pieces: t.truncatedPieces, marginals: marginals)
        }
        inputs = [input(e.first, m.first), input(e.second, m.second)]
        matrix_layout = "R is T1 x T2 row-major (float32): R[i, j] at i * T2 + j, token i of the first text with token j of the second ([CLS] and [SEP] included)"
        top_positive = e.top(top).map { Pair(value: $0.value, first: $0.first, second: $0.second) }
        top_negative = e.top(top, positive: false).map { Pair(value: $0.value, first: $0.first, second: $0.second) }
        self.timings = timings
        notes = explainer.notes(e)
    }

    public func json() throws -> Data { try ReportJSON.encode(self) }
}

extension TextPairExplanation {
    /// What the token pictures draw: each token as the original text it covers ([CLS] and [SEP] by
    /// name), word pieces joined to the word they continue.
    public func figure(setup: String) -> TokenPairFigure {
        func line(_ e: EncodedText) -> TokenLine {
            TokenLine(labels: e.tokens.map { $0.span.isEmpty ? $0.text : e.substring(of: $0) },
                      continues: e.tokens.map { $0.text.hasPrefix("##") })
        }
        return TokenPairFigure(relevance: pair.relevance, first: line(first), second: line(second), similarity: pair.similarity,
                               relevanceSum: Float(pair.conservation.relevanceSum), setup: setup)
    }
}
