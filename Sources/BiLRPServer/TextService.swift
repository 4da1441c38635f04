import BiLRP
import BiLRPIO
import BiLRPText
import Crypto
import Foundation

/// The server's text model: a sentence encoder loaded once, and its explainers for the rules and
/// similarities requests ask for, built on first use (at most the presets times dot and cosine).
final class TextModel: @unchecked Sendable {
    let encoder: SentenceEncoder
    let source: String
    /// The rules and similarity of the loaded explainer (a request without settings gets them).
    let rules: String
    let similarity: Similarity
    private let limits: ResourceLimits
    private let lock = NSLock()
    private var explainers: [String: TextExplainer] = [:]

    init(directory: String, rules: String, limits: ResourceLimits) throws {
        encoder = try SentenceEncoder.load(directory: directory)
        source = directory
        self.limits = limits
        let ex = try TextExplainer(encoder: encoder, rules: rules, limits: limits)
        self.rules = rules
        similarity = ex.explainer.similarity
        explainers[Self.key(rules, similarity)] = ex
    }

    /// The rules a request may ask for: the presets and the loaded rules.
    var allowedRules: [String] { Array(Set(TextExplainer.presets.keys).union([rules])).sorted() }

    static func key(_ rules: String, _ similarity: Similarity) -> String { "\(rules)|\(similarity.rawValue)" }

    /// The explainer for rules and similarity (built here on first use: call it on a compute thread).
    func explainer(rules: String, similarity: Similarity) throws -> TextExplainer {
        let key = Self.key(rules, similarity)
        if let ex = lock.withLock({ explainers[key] }) { return ex }
        let ex = try TextExplainer(encoder: encoder, rules: rules, similarity: similarity, limits: limits)
        return lock.withLock {
            if let built = explainers[key] { return built }
            explainers[key] = ex
            return ex
        }
    }

    /// The text model's part of GET /v1/model.
    var description: [String: Any] {
        let c = encoder.config
        return ["source": source, "layers": c.layers, "hidden_size": c.hiddenSize, "heads": c.heads,
                "max_length": encoder.maxLength, "pooling": encoder.pooling.rawValue, "normalizes": encoder.normalizes,
                "rules": rules, "similarity": similarity.rawValue, "allowed_rules": allowedRules]
    }
}

// MARK: - Request

/// What a text request may override: the rules (a preset or the loaded rules), the similarity, top_k.
struct TextRequestSettings: Decodable, Sendable {
    var rules: String?
    var similarity: String?
    var top_k: Int?

    enum CodingKeys: String, CodingKey, CaseIterable { case rules, similarity, top_k }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self, nulls: false)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        rules = try c.decodeIfPresent(String.self, forKey: .rules)
        similarity = try c.decodeIfPresent(String.self, forKey: .similarity)
        top_k = try integer(c, .top_k)
    }
}

/// `POST /v1/explain/text`: two texts (UTF-8 strings).
typealias TextExplainRequest = PairRequest<String, TextRequestSettings>

/// `POST /v1/explain/text/batch`: one query text against up to `max_batch` item texts.
typealias TextBatchRequest = QueryItemsRequest<String, TextRequestSettings>

struct TextBatchAnswer: Encodable {
    var results: [TextExplanationReport]
}

// MARK: - Route

extension ExplanationService {
    /// The text model, or a 404 that says how to start a server with one.
    var textModel: TextModel {
        get throws {
            guard let text else {
                throw ServiceError(404, "this server has no text model (start it with --text-model DIR, a sentence-transformers BERT folder)")
            }
            return text
        }
    }

    /// A request's rules, similarity and top_k on top of the loaded ones, each checked in its field's name.
    func textSettings(_ r: TextRequestSettings?, _ model: TextModel) throws -> (String, Similarity, Int) {
        var rules = model.rules, similarity = model.similarity, top = 10
        guard let r else { return (rules, similarity, top) }
        if let v = r.rules {
            guard model.allowedRules.contains(v) else {
                throw ServiceError(400, "settings.rules must be one of \(model.allowedRules.joined(separator: ", ")) (got '\(v)')")
            }
            rules = v
        }
        if let v = r.similarity {
            guard let sim = Similarity(rawValue: v) else {
                throw ServiceError(400, "settings.similarity must be dot or cosine (got '\(v)')")
            }
            similarity = sim
        }
        if let v = r.top_k {
            guard (0...RequestSettings.maxTopK).contains(v) else {
                throw ServiceError(400, "settings.top_k must be in 0...\(RequestSettings.maxTopK) (got \(v))")
            }
            top = v
        }
        return (rules, similarity, top)
    }

    /// The answer of `POST /v1/explain/text`: the JSON of `bilrp explain-text --json`, with the
    /// pictures and R when asked for.
    func explainText(_ req: TextExplainRequest) async throws -> TextExplanationReport {
        let model = try textModel
        let (rules, similarity, top) = try textSettings(req.settings, model)
        let tokens = try tokenize([("first", req.first), ("second", req.second)], model)
        let start = Date()
        let a = try await textFactors(tokens[0], rules: rules, similarity: similarity, model: model)
        let b = try await textFactors(tokens[1], rules: rules, similarity: similarity, model: model)
        return try await textReport(a, b, rules: rules, similarity: similarity, top: top, model: model, start: start,
                                    pictures: req.pictures ?? false, matrix: req.matrix ?? false)
    }

    /// The answer of `POST /v1/explain/text/batch`: the query against each item, in order; the
    /// query's factors computed once, each item's taken from the cache when it was seen before.
    func explainTextBatch(_ req: TextBatchRequest) async throws -> TextBatchAnswer {
        let model = try textModel
        try checkBatchSize(req.items.count)
        let (rules, similarity, top) = try textSettings(req.settings, model)
        let tokens = try tokenize([("query", req.query)] + req.items.enumerated().map { ("items[\($0.offset)]", $0.element) }, model)
        // Each report quotes both texts (escaped in the worst case to 6 bytes a byte) and lists their tokens.
        let q = tokens[0]
        let bytes = tokens.dropFirst().reduce(0) { sum, t in
            sum + 6 * (q.text.utf8.count + t.text.utf8.count) + 150 * (q.tokens.count + t.tokens.count) + 600 * top + 4096
        }
        guard bytes <= configuration.maxResponseBytes else {
            throw ServiceError(400, "\(req.items.count) items with these texts and top_k \(top) would make an answer of up to \(bytes) bytes, more than the limit of \(configuration.maxResponseBytes) (max_response_bytes); send fewer or shorter items or a smaller top_k")
        }
        let query = try await textFactors(q, rules: rules, similarity: similarity, model: model)
        var results: [TextExplanationReport] = []
        for t in tokens.dropFirst() {
            let start = Date()
            let item = try await textFactors(t, rules: rules, similarity: similarity, model: model)
            results.append(try await textReport(query, item, rules: rules, similarity: similarity, top: top, model: model,
                                                start: start, pictures: false, matrix: false))
        }
        return TextBatchAnswer(results: results)
    }

    /// Texts tokenized, each within max_text_bytes: cheap, and names a bad text (by its field)
    /// before the request takes a compute slot.
    func tokenize(_ texts: [(field: String, text: String)], _ model: TextModel) throws -> [EncodedText] {
        let limit = configuration.maxTextBytes
        return try texts.map { field, text in
            guard text.utf8.count <= limit else {
                throw ServiceError(400, "\(field) has \(text.utf8.count) UTF-8 bytes, more than the limit of \(limit) (max_text_bytes)")
            }
            do { return try model.encoder.tokenize(text) } catch let e as BiLRPError { throw ServiceError(400, "\(field): \(e)") }
        }
    }

    /// The report of a text pair from both texts' factors (the pair product, in a compute slot).
    func textReport(_ a: TextFactors, _ b: TextFactors, rules: String, similarity: Similarity, top: Int, model: TextModel,
                    start: Date, pictures: Bool, matrix: Bool) async throws -> TextExplanationReport {
        let factorSeconds = Date().timeIntervalSince(start)
        return try await pool.run {
            let ex = try model.explainer(rules: rules, similarity: similarity)
            let t = Date()
            let e = try ex.explain(a, b)
            let timings = ["factors_seconds": factorSeconds, "pair_seconds": Date().timeIntervalSince(t),
                           "total_seconds": Date().timeIntervalSince(start)]
            var r = TextExplanationReport(e, explainer: ex, source: model.source, top: top, timings: timings)
            if pictures {
                let style = PairPictureStyle()
                let figure = ex.figure(e, source: model.source)
                r.pair_png = try Pictures.tokenPairPicture(figure, style: style).base64EncodedString()
                r.matrix_png = try Pictures.tokenMatrixPicture(figure, style: style).base64EncodedString()
            }
            if matrix { r.matrix_npy = NPY.encode(try e.relevanceTensor()).base64EncodedString() }
            return r
        }
    }

    /// The factor cache's key of a text under rules: the text and the rules decide its factors (the
    /// similarity does not: it only scales the pair product). The text, not its token ids: the
    /// cached factors carry the text's spans, which the report quotes.
    func textKey(_ tokens: EncodedText, rules: String) -> String {
        var h = SHA256()
        h.update(data: Data("\(rules.utf8.count):\(rules)|".utf8))
        h.update(data: Data(tokens.text.utf8))
        return "text:" + h.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// A text's factors under rules: from the factor cache, or computed in a compute slot (once
    /// for concurrent requests with the same text). Repeated documents cost their pair product only.
    func textFactors(_ tokens: EncodedText, rules: String, similarity: Similarity, model: TextModel) async throws
        -> TextFactors {
        let key = textKey(tokens, rules: rules)
        if let v = await cache.text(key) {
            RequestStats.current?.cache(hit: true)
            return v
        }
        let (pool, metrics) = (self.pool, self.metrics)
        let (v, hit) = try await cache.get(key) { cancellation in
            try await pool.run(cancellation: cancellation) {
                metrics.factorComputations.increment()
                let ex = try model.explainer(rules: rules, similarity: similarity)
                return .text(try ex.factors(tokens, cancellation: cancellation))
            }
        }
        RequestStats.current?.cache(hit: hit)
        guard case .text(let f) = v else { throw ServiceError(500, "the cache holds no text factors under \(key)") }
        return f
    }
}
