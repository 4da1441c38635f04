import BiLRP
import BiLRPIO
import Foundation

// MARK: - Request bodies (strict: an unknown key anywhere is a 400 naming it)

/// One input of a request: an image (base64 PNG/JPEG) or the id of factors computed before.
struct InputRef: Decodable, Sendable {
    var image: String?
    var factors: String?

    enum CodingKeys: String, CodingKey, CaseIterable { case image, factors }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self, nulls: false)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        image = try c.decodeIfPresent(String.self, forKey: .image)
        factors = try c.decodeIfPresent(String.self, forKey: .factors)
    }

    init(image: String? = nil, factors: String? = nil) { self.image = image; self.factors = factors }
}

/// What a request may override of the loaded settings.
struct RequestSettings: Decodable, Sendable {
    var rules: String?
    var patch: Int?
    var top_k: Int?
    var similarity: String?
    var head: String?
    var layer: LayerCut?

    enum CodingKeys: String, CodingKey, CaseIterable { case rules, patch, top_k, similarity, head, layer }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self, nulls: false)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        rules = try c.decodeIfPresent(String.self, forKey: .rules)
        patch = try integer(c, .patch)
        top_k = try integer(c, .top_k)
        similarity = try c.decodeIfPresent(String.self, forKey: .similarity)
        head = try c.decodeIfPresent(String.self, forKey: .head)
        // An integer cuts a chain after that many layers; a string names a node.
        if let name = try? c.decodeIfPresent(String.self, forKey: .layer) {
            layer = .name(name)
        } else {
            layer = try integer(c, .layer).map(LayerCut.index)
        }
    }

    static let maxPatch = 64
    static let maxTopK = 1000
}

/// A pair to explain: two inputs (images or factor ids for /v1/explain, texts for /v1/explain/text),
/// the settings a request may override, and what to add to the answer.
struct PairRequest<Input: Decodable & Sendable, Settings: Decodable & Sendable>: Decodable, Sendable {
    var first: Input
    var second: Input
    var settings: Settings?
    /// Include the two pictures (base64 PNG).
    var pictures: Bool?
    /// Include R as a base64 NPY file (the bytes `--npy` writes).
    var matrix: Bool?

    enum CodingKeys: String, CodingKey, CaseIterable { case first, second, settings, pictures, matrix }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self, nulls: false)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        first = try c.decode(Input.self, forKey: .first)
        second = try c.decode(Input.self, forKey: .second)
        settings = try c.decodeIfPresent(Settings.self, forKey: .settings)
        pictures = try c.decodeIfPresent(Bool.self, forKey: .pictures)
        matrix = try c.decodeIfPresent(Bool.self, forKey: .matrix)
    }
}

typealias ExplainRequest = PairRequest<InputRef, RequestSettings>

struct FactorsRequest: Decodable, Sendable {
    var image: String
    var settings: RequestSettings?

    enum CodingKeys: String, CodingKey, CaseIterable { case image, settings }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self, nulls: false)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        image = try c.decode(String.self, forKey: .image)
        settings = try c.decodeIfPresent(RequestSettings.self, forKey: .settings)
    }
}

/// A batch request: one query against items (images or factor ids, or texts), with settings.
struct QueryItemsRequest<Input: Decodable & Sendable, Settings: Decodable & Sendable>: Decodable, Sendable {
    var query: Input
    var items: [Input]
    var settings: Settings?

    enum CodingKeys: String, CodingKey, CaseIterable { case query, items, settings }

    init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self, nulls: false)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        query = try c.decode(Input.self, forKey: .query)
        items = try c.decode([Input].self, forKey: .items)
        settings = try c.decodeIfPresent(Settings.self, forKey: .settings)
    }
}

typealias BatchRequest = QueryItemsRequest<InputRef, RequestSettings>

// MARK: - Answers

struct FactorsAnswer: Encodable {
    var id: String
    var cached: Bool
    var outputs: Int
    var patches: Int
    var patch_rows: Int
    var patch_columns: Int
    var patch: Int
    var similarity_embedding_norm: Float
}

struct BatchAnswer: Encodable {
    var query_factors: String?
    var results: [ExplanationReport]
}

/// The body of every error answer.
struct ErrorAnswer: Encodable {
    var error: String
    var status: Int
    var request_id: String
}

/// An integer field, read as a number first so that 2.5 is named as not an integer (the JSON
/// decoder would call the whole body malformed).
func integer<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K) throws -> Int? {
    guard let d = try c.decodeIfPresent(Double.self, forKey: key) else { return nil }
    guard d == d.rounded(), abs(d) < 1e15 else {
        let path = (c.codingPath + [key]).map(\.stringValue).joined(separator: ".")
        throw ServiceError(400, "\(path) must be an integer (got \(d))")
    }
    return Int(d)
}

func decodeRequest<T: Decodable>(_ type: T.Type, _ body: Data) throws -> T {
    do { return try JSONDecoder().decode(type, from: body) } catch let e as ServiceError { throw e } catch {
        throw ServiceError(400, describeDecodingError(error))
    }
}
