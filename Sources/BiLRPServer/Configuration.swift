import BiLRP
import BiLRPIO
import BiLRPText
import Foundation

/// Limits and deployment settings of `bilrp serve`. Decoded from a `--config` JSON file: every key
/// optional (absent keys keep the defaults below), an unknown key an error that names it.
public struct ServerConfiguration: Sendable, Codable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// The model, head, rules and image handling of the loaded explainer (requests may override
    /// rules, patch, top_k, similarity, head and a smaller layer).
    public var settings: ExplanationSettings
    public var maxBodyBytes = 32 << 20
    public var maxImagePixels = 16_000_000
    public var maxBatch = 64
    /// The largest h a request's head may have (`random:H`, or `identity` at the requested layer).
    public var maxOutputs = 4096
    /// The largest estimated memory of one explanation (see `ExplanationRequirements`).
    public var maxExplanationBytes = 4 << 30
    /// The largest answer; a batch whose answer would be larger is refused before it is computed.
    public var maxResponseBytes = 32 << 20
    public var timeoutSeconds = 120.0
    /// Explanations computed at once. The kernels already use every core, so 1 is right for most machines.
    public var computeSlots = 1
    /// Requests waiting for a slot beyond which the server answers 429.
    public var queueLimit = 16
    /// Bytes the factor cache may hold.
    public var cacheBytes = 256 << 20
    /// Explainer variants (other layer, head or rules than the loaded one) kept at once.
    public var maxVariants = 2
    /// Bytes of prepared weights and drawn heads the kept variants may hold together.
    public var maxVariantBytes = 2 << 30
    /// Open connections beyond which new ones wait in the listen backlog.
    public var maxConnections = 512
    /// A connection with no request under way for this long is closed.
    public var idleTimeoutSeconds = 30.0
    /// A request head that has not arrived this long after the connection opened, or a body not
    /// fully arrived this long after its head, gets its connection closed (slow clients cannot hold
    /// connections open).
    public var headerTimeoutSeconds = 10.0
    public var bodyTimeoutSeconds = 60.0
    /// Bearer token required on /v1 and /metrics when set.
    public var token: String?
    /// `text` or `json`: one line per request on standard error; `off` for none.
    public var logFormat = "text"
    /// A sentence-transformers BERT folder: `POST /v1/explain/text` explains text pairs with it.
    public var textModel: String?
    /// The text model's rules (`cp-lrp`, `hp` or a composite string); requests may ask for the other preset.
    public var textRules = "cp-lrp"
    /// Serve texts only: no image model is loaded (the image routes answer 404).
    public var textOnly = false
    /// The longest text a request may send, in UTF-8 bytes (the encoder truncates at its maximum
    /// length in tokens anyway; this bounds the tokenizer's work).
    public var maxTextBytes = 100_000

    public init(settings: ExplanationSettings = .serverDefault) { self.settings = settings }

    /// The library's limits for explanations under this configuration.
    public var limits: ResourceLimits { ResourceLimits(maxOutputs: maxOutputs, maxBytes: maxExplanationBytes) }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case host, port, settings, token
        case maxBodyBytes = "max_body_bytes", maxImagePixels = "max_image_pixels", maxBatch = "max_batch"
        case maxOutputs = "max_outputs", maxExplanationBytes = "max_explanation_bytes"
        case maxResponseBytes = "max_response_bytes"
        case timeoutSeconds = "timeout_seconds", computeSlots = "compute_slots", queueLimit = "queue_limit"
        case cacheBytes = "cache_bytes", maxVariants = "max_variants", maxVariantBytes = "max_variant_bytes"
        case maxConnections = "max_connections"
        case idleTimeoutSeconds = "idle_timeout_seconds", headerTimeoutSeconds = "header_timeout_seconds"
        case bodyTimeoutSeconds = "body_timeout_seconds", logFormat = "log_format"
        case textModel = "text_model", textRules = "text_rules", textOnly = "text_only", maxTextBytes = "max_text_bytes"
    }

    public init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init()
        if c.contains(.settings) {
            // Settings absent from the file keep the server's defaults, not the CLI's.
            let nested = try c.superDecoder(forKey: .settings)
            settings = try ExplanationSettings(from: BaseDecoder(nested, base: .serverDefault))
        }
        func read<T: Decodable>(_ key: CodingKeys, _ value: inout T) throws {
            if let v = try c.decodeIfPresent(T.self, forKey: key) { value = v }
        }
        try read(.host, &host); try read(.port, &port)
        token = try c.decodeIfPresent(String.self, forKey: .token)
        try read(.maxBodyBytes, &maxBodyBytes); try read(.maxImagePixels, &maxImagePixels)
        try read(.maxBatch, &maxBatch); try read(.maxOutputs, &maxOutputs)
        try read(.maxExplanationBytes, &maxExplanationBytes); try read(.maxResponseBytes, &maxResponseBytes)
        try read(.timeoutSeconds, &timeoutSeconds); try read(.computeSlots, &computeSlots)
        try read(.queueLimit, &queueLimit); try read(.cacheBytes, &cacheBytes); try read(.maxVariants, &maxVariants)
        try read(.maxVariantBytes, &maxVariantBytes)
        try read(.maxConnections, &maxConnections); try read(.idleTimeoutSeconds, &idleTimeoutSeconds)
        try read(.headerTimeoutSeconds, &headerTimeoutSeconds); try read(.bodyTimeoutSeconds, &bodyTimeoutSeconds)
        try read(.logFormat, &logFormat)
        textModel = try c.decodeIfPresent(String.self, forKey: .textModel)
        try read(.textRules, &textRules); try read(.textOnly, &textOnly); try read(.maxTextBytes, &maxTextBytes)
    }

    /// Every value in its range; the message names the configuration key.
    public func validate() throws {
        func positive(_ v: Int, _ name: String) throws {
            guard v >= 1 else { throw BiLRPError.invalidArgument("\(name) must be at least 1 (got \(v))") }
        }
        func positive(_ v: Double, _ name: String) throws {
            guard v > 0, v.isFinite else { throw BiLRPError.invalidArgument("\(name) must be a positive number of seconds (got \(v))") }
        }
        guard (0...65535).contains(port) else { throw BiLRPError.invalidArgument("port must be in 0...65535 (got \(port))") }
        try positive(maxBodyBytes, "max_body_bytes"); try positive(maxImagePixels, "max_image_pixels")
        try positive(maxBatch, "max_batch"); try positive(maxOutputs, "max_outputs")
        try positive(maxExplanationBytes, "max_explanation_bytes"); try positive(maxResponseBytes, "max_response_bytes")
        try positive(computeSlots, "compute_slots"); try positive(maxConnections, "max_connections")
        guard queueLimit >= 0 else { throw BiLRPError.invalidArgument("queue_limit must be >= 0 (got \(queueLimit))") }
        guard cacheBytes >= 0 else { throw BiLRPError.invalidArgument("cache_bytes must be >= 0 (got \(cacheBytes))") }
        guard maxVariants >= 0 else { throw BiLRPError.invalidArgument("max_variants must be >= 0 (got \(maxVariants))") }
        guard maxVariantBytes >= 0 else {
            throw BiLRPError.invalidArgument("max_variant_bytes must be >= 0 (got \(maxVariantBytes))")
        }
        try positive(timeoutSeconds, "timeout_seconds"); try positive(idleTimeoutSeconds, "idle_timeout_seconds")
        try positive(headerTimeoutSeconds, "header_timeout_seconds"); try positive(bodyTimeoutSeconds, "body_timeout_seconds")
        guard ["text", "json", "off"].contains(logFormat) else {
            throw BiLRPError.invalidArgument("log_format must be text, json or off (got '\(logFormat)')")
        }
        if let token, token.isEmpty { throw BiLRPError.invalidArgument("token must not be empty") }
        try positive(maxTextBytes, "max_text_bytes")
        if textOnly, textModel == nil {
            throw BiLRPError.invalidArgument("text_only needs a text_model (--text-model DIR): the server would have no model")
        }
        if textModel != nil {
            do { _ = try Composite.named(TextExplainer.presets[textRules] ?? textRules) } catch {
                throw BiLRPError.invalidArgument("text_rules: \(error)")
            }
        }
        if !textOnly { try settings.validate() }
    }

    /// Reads a `--config` file: a partial file fills the rest from the defaults.
    public static func read(path: String) throws -> ServerConfiguration {
        guard let d = FileManager.default.contents(atPath: path) else { throw BiLRPError.io("cannot read config '\(path)'") }
        do { return try JSONDecoder().decode(ServerConfiguration.self, from: d) } catch {
            throw BiLRPError.invalidArgument("config '\(path)': \(describeDecodingError(error))")
        }
    }
}

/// A decoder that adds the settings base to another decoder's user info.
private struct BaseDecoder: Decoder {
    let inner: any Decoder
    let userInfo: [CodingUserInfoKey: Any]
    init(_ inner: any Decoder, base: ExplanationSettings) {
        self.inner = inner
        var info = inner.userInfo
        info[ExplanationSettings.decodingBase] = base
        userInfo = info
    }
    var codingPath: [any CodingKey] { inner.codingPath }
    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        try inner.container(keyedBy: type)
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer { try inner.unkeyedContainer() }
    func singleValueContainer() throws -> any SingleValueDecodingContainer { try inner.singleValueContainer() }
}

extension ExplanationSettings {
    /// The paper's setup on the fetched ImageNet VGG-16: pool5, h = 100, paper-vgg, 8 x 8 patches,
    /// 128 x 128 inputs.
    public static var serverDefault: ExplanationSettings {
        var s = ExplanationSettings()
        s.model = "assets/models/vgg16_imagenet.onnx"
        s.layer = 31
        s.size = 128
        return s
    }
}

/// An error answered as a 4xx/5xx JSON body `{"error": message, "status": code}`.
public struct ServiceError: Error, Sendable {
    public var status: Int
    public var message: String
    public var retryAfter: Int? = nil
    public init(_ status: Int, _ message: String, retryAfter: Int? = nil) {
        self.status = status; self.message = message; self.retryAfter = retryAfter
    }
}
