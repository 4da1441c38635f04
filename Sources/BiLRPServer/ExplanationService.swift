import BiLRP
import BiLRPIO
import BiLRPText
import Crypto
import Foundation
import Logging
import NIOPosix

/// The explainer variants requests ask for (another layer, head or rules than the loaded one):
/// built on a thread of their own, off the request path and the cooperative pool, once for
/// concurrent requests. At most `limit` are kept, holding at most `maxBytes` of prepared weights
/// and drawn heads together (`Explainer.preparedBytes`, which grows when a head is drawn for a new
/// input size): least recently used evicted first, counted on every use. A variant that alone
/// exceeds the bound serves the request that built it and is not kept.
actor ExplainerVariants {
    private var entries: [String: (value: LoadedExplainer, tick: Int)] = [:]
    private var building: [String: Task<LoadedExplainer, any Error>] = [:]
    private var tick = 0
    private let limit: Int
    private let maxBytes: Int
    private let thread: NIOThreadPool
    private let metrics: ServerMetrics

    init(limit: Int, maxBytes: Int, metrics: ServerMetrics) {
        self.limit = limit
        self.maxBytes = maxBytes
        self.metrics = metrics
        thread = NIOThreadPool(numberOfThreads: 1)
        thread.start()
    }

    func get(_ key: String, build: @escaping @Sendable () throws -> LoadedExplainer) async throws -> LoadedExplainer {
        tick += 1
        if let e = entries[key] {
            entries[key] = (e.value, tick)
            evict()
            return e.value
        }
        guard limit > 0 else {
            throw ServiceError(400, "this server explains with its loaded layer, head and rules only (max_variants is 0)")
        }
        let task = building[key] ?? Task { [thread] in try await thread.runIfActive(build) }
        building[key] = task
        defer { building[key] = nil }
        let v = try await task.value
        metrics.explainerBuilds.increment()
        tick += 1
        entries[key] = (v, tick)
        evict()
        return v
    }

    /// Applies the bounds again after a computation (a variant's first input of a size draws its head).
    func refresh() { evict() }

    /// Bytes the kept variants hold now.
    var bytes: Int { entries.values.reduce(0) { $0 + $1.value.explainer.preparedBytes } }

    private func evict() {
        var total = bytes
        while entries.count > limit || total > maxBytes,
              let oldest = entries.min(by: { $0.value.tick < $1.value.tick }) {
            total -= oldest.value.value.explainer.preparedBytes
            entries[oldest.key] = nil
        }
        metrics.explainers.record(entries.count + 1)
        metrics.variantBytes.record(total)
    }

    func shutdown() async throws { try await thread.shutdownGracefully() }
}

/// The explanation backend: the loaded models (an image model, a text model, or both), explainers
/// per request settings, the factor cache.
public final class ExplanationService: @unchecked Sendable {
    public let configuration: ServerConfiguration
    /// The image model (nil when the server serves texts only).
    let image: LoadedExplainer?
    /// The text model (nil without `text_model`).
    let text: TextModel?
    let pool: ComputePool
    /// Images are decoded here, before a request takes a queue slot (an undecodable image is a 400 at once).
    let decoding: NIOThreadPool
    let cache: FactorCache
    let metrics: ServerMetrics
    let variants: ExplainerVariants
    public let logger: Logger

    public init(configuration: ServerConfiguration, logger: Logger? = nil) throws {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger ?? Logger.bilrp(format: configuration.logFormat)
        metrics = ServerMetrics(version: BiLRPVersion.string)
        image = configuration.textOnly ? nil : try LoadedExplainer.load(configuration.settings, limits: configuration.limits)
        text = try configuration.textModel.map {
            try TextModel(directory: $0, rules: configuration.textRules, limits: configuration.limits)
        }
        pool = ComputePool(slots: configuration.computeSlots, queueLimit: configuration.queueLimit)
        decoding = NIOThreadPool(numberOfThreads: 2)
        decoding.start()
        cache = FactorCache(capacity: configuration.cacheBytes, metrics: metrics)
        variants = ExplainerVariants(limit: configuration.maxVariants, maxBytes: configuration.maxVariantBytes,
                                     metrics: metrics)
        metrics.explainers.record(1)
    }

    public func shutdown() async throws {
        try await pool.shutdown()
        try await decoding.shutdownGracefully()
        try await variants.shutdown()
    }

    /// The image model, or a 404 that says this server explains texts only.
    var base: LoadedExplainer {
        get throws {
            guard let image else {
                throw ServiceError(404, "this server has no image model (it was started with --text-only); texts are explained at POST /v1/explain/text")
            }
            return image
        }
    }

    /// What makes an explainer different (patch and top_k do not).
    static func key(_ s: ExplanationSettings) -> String {
        "\(s.layer?.description ?? "-1")|\(s.head)|\(s.projection ?? "")|\(s.rules)|\(s.similarity)"
    }

    /// Request settings on top of the loaded ones, each value checked in its JSON field's name, and
    /// the size of the explanation they ask for checked against the limits before anything is built.
    func settings(_ r: RequestSettings?) throws -> ExplanationSettings {
        let s = try overridden(r)
        if s.size > 0 { try checkLimits(s, input: Shape3(inputChannels, s.size, s.size)) }
        return s
    }

    func overridden(_ r: RequestSettings?) throws -> ExplanationSettings {
        let base = try self.base
        var s = base.settings
        guard let r else { return s }
        if let v = r.rules {
            do { _ = try Composite.named(v) } catch { throw ServiceError(400, "settings.rules: \(error)") }
            s.rules = v
        }
        if let v = r.patch {
            guard (1...RequestSettings.maxPatch).contains(v) else {
                throw ServiceError(400, "settings.patch must be in 1...\(RequestSettings.maxPatch) (got \(v))")
            }
            s.patch = v
        }
        if let v = r.top_k {
            guard (0...RequestSettings.maxTopK).contains(v) else {
                throw ServiceError(400, "settings.top_k must be in 0...\(RequestSettings.maxTopK) (got \(v))")
            }
            s.topK = v
        }
        if let v = r.similarity {
            guard Similarity(rawValue: v) != nil else {
                throw ServiceError(400, "settings.similarity must be dot or cosine (got '\(v)')")
            }
            s.similarity = v
        }
        if let v = r.head {
            do { _ = try SimilarityHead(parsing: v) } catch { throw ServiceError(400, "settings.head: \(error)") }
            s.head = v
            s.projection = nil
        }
        if let v = r.layer {
            switch v {
            case let .index(i):
                let n = base.graph.chainLength
                guard n > 0 else {
                    throw ServiceError(400, "settings.layer: the loaded model is a graph: give a node name (nodes of GET /v1/model), not \(i)")
                }
                guard (1...n).contains(i) else {
                    throw ServiceError(400, "settings.layer must be in 1...\(n), the loaded model's layers (got \(i))")
                }
                s.layer = .index(i)
            case let .name(name):
                guard base.graph.nodes.contains(where: { $0.name == name }) else {
                    throw ServiceError(400, "settings.layer: the loaded model has no node named '\(name)' (GET /v1/model lists its nodes)")
                }
                s.layer = .name(name)
            }
        }
        return s
    }

    /// The model's input channels (those of its first convolution; 3 for a model without one).
    var inputChannels: Int { image?.graph.inputChannels ?? 3 }

    /// The loaded model cut as the settings ask (the loaded one when they ask for no cut).
    func model(_ s: ExplanationSettings) throws -> Graph {
        let base = try self.base
        guard let cut = s.layer, cut != base.settings.layer else { return base.graph }
        return try base.graph.cut(cut)
    }

    /// h and the estimated memory of explaining an input of `shape` with settings s, against the limits.
    func checkLimits(_ s: ExplanationSettings, input shape: Shape3) throws {
        do {
            let head = s.projection != nil ? try base.explainer.head : try SimilarityHead(parsing: s.head)
            try configuration.limits.check(try model(s).requirements(head: head, input: shape, patch: s.patch))
        } catch let e as BiLRPError {
            throw ServiceError(400, "\(e) (settings: layer \(s.layer?.description ?? "as loaded"), head \(s.head), patch \(s.patch))")
        }
    }

    /// The explainer for settings (model, head, rules; patch, top_k and similarity do not need a new one).
    func explainer(_ s: ExplanationSettings) async throws -> LoadedExplainer {
        var loaded: LoadedExplainer
        let base = try self.base
        if Self.key(s) == Self.key(base.settings) {
            loaded = base
        } else {
            let limits = configuration.limits
            loaded = try await variants.get(Self.key(s)) {
                do {
                    let model = try self.model(s)
                    let head: SimilarityHead = s.projection != nil ? base.explainer.head : try SimilarityHead(parsing: s.head)
                    let ex = try Explainer(graph: model, head: head, similarity: Similarity(rawValue: s.similarity)!,
                                           composite: try Composite.named(s.rules), bounds: base.preprocessing.bounds,
                                           limits: limits)
                    return LoadedExplainer(explainer: ex, settings: s, preprocessing: base.preprocessing, graph: model,
                                           source: base.source, notes: base.notes)
                } catch let e as BiLRPError {
                    throw ServiceError(400, "\(e)")
                }
            }
        }
        loaded.settings = s
        return loaded
    }

    /// The content hash of an image and the settings that shape its factors: the factor id.
    func factorID(_ image: Data, _ s: ExplanationSettings) throws -> String {
        let base = try self.base
        var h = SHA256()
        h.update(data: image)
        h.update(data: Data("|\(s.layer?.description ?? "-1")|\(s.head)|\(s.projection ?? "")|\(s.rules)|\(s.patch)|\(s.size)|\(base.preprocessing.rawValue)".utf8))
        return h.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// Decodes, resizes and normalizes image bytes on the decoding threads (not a compute slot).
    func decode(_ image: Data, _ field: String, _ loaded: LoadedExplainer) async throws -> PreparedInput {
        let maxPixels = configuration.maxImagePixels
        return try await decoding.runIfActive {
            do { return try loaded.input(data: image, name: field, maxPixels: maxPixels) } catch let e as BiLRPError {
                throw ServiceError(400, "\(field): \(e)")
            }
        }
    }

    /// Factors of an image (cached, computed once for concurrent equal requests). The image is
    /// decoded and the explanation's size checked before the request takes a queue slot.
    func factors(image: Data, field: String, settings s: ExplanationSettings) async throws
        -> (id: String, value: CachedFactors, cached: Bool) {
        let id = try factorID(image, s)
        if let v = await cache.image(id) {
            RequestStats.current?.cache(hit: true)
            return (id, v, true)
        }
        // Decoding depends on the size and preprocessing only, which no request changes: an
        // undecodable image is refused before any explainer variant is built for it.
        let input = try await decode(image, field, try base)
        if s.size == 0 { try checkLimits(s, input: try input.tensor.shape3()) }
        let loaded = try await explainer(s)
        let (pool, metrics) = (self.pool, self.metrics)
        let (v, hit) = try await cache.get(id) { cancellation in
            try await pool.run(cancellation: cancellation) {
                metrics.factorComputations.increment()
                do {
                    let f = try loaded.explainer.factors(input.tensor, patch: s.patch, cancellation: cancellation)
                    return .image(CachedFactors(factors: f, display: input.display, settings: s))
                } catch let e as BiLRPError where e != .cancelled {
                    throw ServiceError(400, "\(field): \(e)")
                }
            }
        }
        RequestStats.current?.cache(hit: hit)
        if try loaded.explainer !== base.explainer { await variants.refresh() }
        guard case .image(let value) = v else { throw ServiceError(500, "the cache holds no image factors under \(id)") }
        return (id, value, hit)
    }

    /// Factors by id (only for ids the cache still holds), computed with the settings s asks for.
    func factors(id: String, field: String, settings s: ExplanationSettings) async throws -> CachedFactors {
        guard let v = await cache.image(id) else {
            throw ServiceError(404, "\(field): unknown factor id '\(id)' (not computed here, or evicted from the cache)")
        }
        RequestStats.current?.cache(hit: true)
        let a = v.settings
        var differences: [String] = []
        if a.layer != s.layer { differences.append("layer \(a.layer?.description ?? "-") (asked: \(s.layer?.description ?? "-"))") }
        if a.head != s.head || a.projection != s.projection { differences.append("head \(a.head) (asked: \(s.head))") }
        if a.rules != s.rules { differences.append("rules \(a.rules) (asked: \(s.rules))") }
        if a.patch != s.patch { differences.append("patch \(a.patch) (asked: \(s.patch))") }
        if !differences.isEmpty {
            throw ServiceError(409, "\(field) was computed with other settings than the request asks for: \(differences.joined(separator: ", ")); send the image, or factors computed with these settings")
        }
        return v
    }
}

extension FactorCache {
    /// An image's factors under a factor id, counted as a hit when found (a miss is counted by
    /// `get`). Text entries live under keys no image id takes (`text:` and a hash).
    func image(_ key: String) -> CachedFactors? {
        guard case .image(let v)? = lookup(key) else { return nil }
        countHit()
        return v
    }

    /// A text's factors under its key (`textKey`), counted as a hit when found.
    func text(_ key: String) -> TextFactors? {
        guard case .text(let v)? = lookup(key) else { return nil }
        countHit()
        return v
    }
}
