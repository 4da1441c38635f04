import BiLRP
import BiLRPIO
import Crypto
import Foundation
import NIOPosix

/// Limits and deployment settings of `bilrp serve`.
public struct ServerConfiguration: Sendable, Codable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// The model, head, rules and image handling of the loaded explainer (requests may override
    /// rules, patch, top_k, similarity, head and a smaller layer).
    public var settings: ExplanationSettings
    public var maxBodyBytes = 32 << 20
    public var maxImagePixels = 16_000_000
    public var maxBatch = 64
    public var timeoutSeconds = 120.0
    /// Explanations computed at once. The kernels already use every core, so 1 is right for most machines.
    public var computeSlots = 1
    /// Requests waiting for a slot beyond which the server answers 429.
    public var queueLimit = 16
    /// Bytes the factor cache may hold.
    public var cacheBytes = 256 << 20
    /// Bearer token required on /v1 and /metrics when set.
    public var token: String?

    public init(settings: ExplanationSettings = .serverDefault) { self.settings = settings }

    enum CodingKeys: String, CodingKey {
        case host, port, settings, token
        case maxBodyBytes = "max_body_bytes", maxImagePixels = "max_image_pixels", maxBatch = "max_batch"
        case timeoutSeconds = "timeout_seconds", computeSlots = "compute_slots", queueLimit = "queue_limit"
        case cacheBytes = "cache_bytes"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        settings = try c.decodeIfPresent(ExplanationSettings.self, forKey: .settings) ?? .serverDefault
        host = try c.decodeIfPresent(String.self, forKey: .host) ?? host
        port = try c.decodeIfPresent(Int.self, forKey: .port) ?? port
        token = try c.decodeIfPresent(String.self, forKey: .token)
        maxBodyBytes = try c.decodeIfPresent(Int.self, forKey: .maxBodyBytes) ?? maxBodyBytes
        maxImagePixels = try c.decodeIfPresent(Int.self, forKey: .maxImagePixels) ?? maxImagePixels
        maxBatch = try c.decodeIfPresent(Int.self, forKey: .maxBatch) ?? maxBatch
        timeoutSeconds = try c.decodeIfPresent(Double.self, forKey: .timeoutSeconds) ?? timeoutSeconds
        computeSlots = try c.decodeIfPresent(Int.self, forKey: .computeSlots) ?? computeSlots
        queueLimit = try c.decodeIfPresent(Int.self, forKey: .queueLimit) ?? queueLimit
        cacheBytes = try c.decodeIfPresent(Int.self, forKey: .cacheBytes) ?? cacheBytes
    }
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

/// An error answered as a 4xx/5xx JSON body `{"error": message}`.
public struct ServiceError: Error, Sendable {
    public var status: Int
    public var message: String
    public var retryAfter: Int? = nil
    public init(_ status: Int, _ message: String, retryAfter: Int? = nil) {
        self.status = status; self.message = message; self.retryAfter = retryAfter
    }
}

/// Runs blocking explanation work on dedicated threads, `slots` at a time, with a bounded queue.
final class ComputePool: @unchecked Sendable {
    private let pool: NIOThreadPool
    private let lock = NSLock()
    private var waiting = 0
    private let limit: Int
    private let slots: Int

    init(slots: Int, queueLimit: Int) {
        self.slots = max(1, slots)
        limit = max(0, queueLimit)
        pool = NIOThreadPool(numberOfThreads: self.slots)
        pool.start()
    }

    /// Requests admitted and not finished beyond the running ones (for /metrics).
    var queueDepth: Int { lock.withLock { max(0, waiting - slots) } }

    func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        let admitted = lock.withLock { () -> Int? in
            if waiting >= slots + limit { return nil }
            waiting += 1
            return waiting
        }
        guard admitted != nil else {
            throw ServiceError(429, "the server is busy: explanations running or queued fill the queue", retryAfter: 2)
        }
        defer { lock.withLock { waiting -= 1 } }
        return try await pool.runIfActive(work)
    }

    func shutdown() async throws { try await pool.shutdownGracefully() }
}

/// What the cache keeps per image and settings.
struct CachedFactors: Sendable {
    var factors: RelevanceFactors
    var display: RGBImage
    var bytes: Int { factors.a.count * 4 + factors.embedding.count * 4 + display.pixels.count * 4 + 256 }
}

/// A memory-bounded LRU of relevance factors keyed by content hash and settings; concurrent
/// requests for the same uncached key share one computation.
actor FactorCache {
    private var entries: [String: (value: CachedFactors, tick: Int)] = [:]
    private var inflight: [String: Task<CachedFactors, any Error>] = [:]
    private var tick = 0
    private(set) var bytes = 0
    let capacity: Int
    private(set) var hits = 0, misses = 0, computations = 0

    init(capacity: Int) { self.capacity = capacity }

    var count: Int { entries.count }

    func lookup(_ key: String) -> CachedFactors? {
        guard let e = entries[key] else { return nil }
        tick += 1
        entries[key] = (e.value, tick)
        return e.value
    }

    /// The cached value, or the result of `compute` (run once for concurrent callers of one key).
    func get(_ key: String, compute: @escaping @Sendable () async throws -> CachedFactors) async throws -> (CachedFactors, Bool) {
        if let v = lookup(key) { hits += 1; return (v, true) }
        if let t = inflight[key] { hits += 1; return (try await t.value, true) }
        misses += 1
        computations += 1
        let task = Task { try await compute() }
        inflight[key] = task
        defer { inflight[key] = nil }
        let v = try await task.value
        insert(key, v)
        return (v, false)
    }

    private func insert(_ key: String, _ v: CachedFactors) {
        guard v.bytes <= capacity else { return }
        tick += 1
        if let old = entries[key] { bytes -= old.value.bytes }
        entries[key] = (v, tick)
        bytes += v.bytes
        while bytes > capacity, let oldest = entries.min(by: { $0.value.tick < $1.value.tick }) {
            bytes -= oldest.value.value.bytes
            entries[oldest.key] = nil
        }
    }
}

/// Counters for /metrics (Prometheus text format 0.0.4).
final class Metrics: @unchecked Sendable {
    private let lock = NSLock()
    private var requests: [String: Int] = [:]  // "route|status"
    static let buckets: [Double] = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
    private var histogram = [Int](repeating: 0, count: Metrics.buckets.count)
    private var latencySum = 0.0, latencyCount = 0

    func record(route: String, status: Int, seconds: Double) {
        lock.lock(); defer { lock.unlock() }
        requests["\(route)|\(status)", default: 0] += 1
        for (i, b) in Metrics.buckets.enumerated() where seconds <= b { histogram[i] += 1 }
        latencySum += seconds
        latencyCount += 1
    }

    func render(queueDepth: Int, cacheEntries: Int, cacheBytes: Int, hits: Int, misses: Int, computations: Int) -> String {
        lock.lock(); defer { lock.unlock() }
        var out = "# HELP bilrp_requests_total Requests by route and status.\n# TYPE bilrp_requests_total counter\n"
        for key in requests.keys.sorted() {
            let p = key.split(separator: "|")
            out += "bilrp_requests_total{route=\"\(p[0])\",status=\"\(p[1])\"} \(requests[key]!)\n"
        }
        out += "# HELP bilrp_request_seconds Request latency.\n# TYPE bilrp_request_seconds histogram\n"
        for (i, b) in Metrics.buckets.enumerated() { out += "bilrp_request_seconds_bucket{le=\"\(b)\"} \(histogram[i])\n" }
        out += "bilrp_request_seconds_bucket{le=\"+Inf\"} \(latencyCount)\n"
        out += "bilrp_request_seconds_sum \(latencySum)\nbilrp_request_seconds_count \(latencyCount)\n"
        out += "# HELP bilrp_queue_depth Explanations waiting for a compute slot.\n# TYPE bilrp_queue_depth gauge\nbilrp_queue_depth \(queueDepth)\n"
        out += "# HELP bilrp_cache_hits_total Factor cache hits.\n# TYPE bilrp_cache_hits_total counter\nbilrp_cache_hits_total \(hits)\n"
        out += "# HELP bilrp_cache_misses_total Factor cache misses.\n# TYPE bilrp_cache_misses_total counter\nbilrp_cache_misses_total \(misses)\n"
        out += "# HELP bilrp_cache_entries Factors in the cache.\n# TYPE bilrp_cache_entries gauge\nbilrp_cache_entries \(cacheEntries)\n"
        out += "# HELP bilrp_cache_bytes Bytes held by the factor cache.\n# TYPE bilrp_cache_bytes gauge\nbilrp_cache_bytes \(cacheBytes)\n"
        out += "# HELP bilrp_factor_computations_total Factor computations (cache misses that ran).\n# TYPE bilrp_factor_computations_total counter\nbilrp_factor_computations_total \(computations)\n"
        return out
    }
}

/// The explanation backend: the loaded model, explainers per request settings, the factor cache.
public final class ExplanationService: @unchecked Sendable {
    public let configuration: ServerConfiguration
    let base: LoadedExplainer
    let pool: ComputePool
    let cache: FactorCache
    let metrics = Metrics()
    private let lock = NSLock()
    private var explainers: [String: (LoadedExplainer, Int)] = [:]
    private var tick = 0

    public init(configuration: ServerConfiguration) throws {
        self.configuration = configuration
        base = try LoadedExplainer.load(configuration.settings)
        pool = ComputePool(slots: configuration.computeSlots, queueLimit: configuration.queueLimit)
        cache = FactorCache(capacity: configuration.cacheBytes)
        explainers[Self.key(base.settings)] = (base, 0)
    }

    /// What makes an explainer different (patch and top_k do not).
    static func key(_ s: ExplanationSettings) -> String {
        "\(s.layer ?? -1)|\(s.head)|\(s.projection ?? "")|\(s.rules)|\(s.similarity)"
    }

    public func shutdown() async throws { try await pool.shutdown() }

    /// Request settings on top of the loaded ones; only what the loaded model allows.
    struct RequestSettings: Decodable {
        var rules: String?
        var patch: Int?
        var top_k: Int?
        var similarity: String?
        var head: String?
        var layer: Int?
    }

    func settings(_ r: RequestSettings?) throws -> ExplanationSettings {
        var s = base.settings
        guard let r else { return s }
        if let v = r.rules { s.rules = v }
        if let v = r.patch { s.patch = v }
        if let v = r.top_k { s.topK = v }
        if let v = r.similarity { s.similarity = v }
        if let v = r.head { s.head = v; s.projection = nil }
        if let v = r.layer {
            guard v >= 1, v <= base.model.layers.count else {
                throw ServiceError(400, "layer \(v) is not available: the loaded model has layers 0..<\(base.model.layers.count), so layer must be in 1...\(base.model.layers.count)")
            }
            s.layer = v
        }
        guard s.patch <= 64 else { throw ServiceError(400, "patch \(s.patch) is larger than the limit of 64") }
        guard s.topK <= 1000 else { throw ServiceError(400, "top_k \(s.topK) is larger than the limit of 1000") }
        do { try s.validate() } catch { throw ServiceError(400, "\(error)") }
        return s
    }

    /// The explainer for settings (model, head, rules; patch, top_k and similarity do not need a new one).
    func explainer(_ s: ExplanationSettings) throws -> LoadedExplainer {
        let key = Self.key(s)
        lock.lock()
        if let e = explainers[key] {
            tick += 1
            explainers[key] = (e.0, tick)
            lock.unlock()
            var l = e.0
            l.settings = s
            return l
        }
        lock.unlock()
        var loaded: LoadedExplainer
        do {
            let model = try base.model.truncated(to: s.layer ?? base.model.layers.count)
            let head: SimilarityHead = s.projection != nil ? base.explainer.head : try SimilarityHead(parsing: s.head)
            let ex = try Explainer(model: model, head: head, similarity: Similarity(rawValue: s.similarity)!,
                                   composite: try Composite.named(s.rules), bounds: base.preprocessing.bounds)
            loaded = LoadedExplainer(explainer: ex, settings: s, preprocessing: base.preprocessing, model: model,
                                     source: base.source, notes: base.notes)
        } catch let e as BiLRPError {
            throw ServiceError(400, "\(e)")
        }
        lock.lock()
        tick += 1
        explainers[key] = (loaded, tick)
        // A VGG-16 explainer holds its modified and Winograd weights (about 350 MB): keep the loaded
        // one and at most two variants.
        let base = Self.key(self.base.settings)
        if explainers.count > 3,
           let oldest = explainers.filter({ $0.key != base }).min(by: { $0.value.1 < $1.value.1 }) {
            explainers[oldest.key] = nil
        }
        lock.unlock()
        return loaded
    }

    /// The content hash of an image and the settings that shape its factors: the factor id.
    func factorID(_ image: Data, _ s: ExplanationSettings) -> String {
        var h = SHA256()
        h.update(data: image)
        h.update(data: Data("|\(s.layer ?? -1)|\(s.head)|\(s.projection ?? "")|\(s.rules)|\(s.patch)|\(s.size)|\(base.preprocessing.rawValue)".utf8))
        return h.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// Factors of an image (cached, computed once for concurrent equal requests).
    func factors(image: Data, settings s: ExplanationSettings) async throws -> (id: String, value: CachedFactors, cached: Bool) {
        let id = factorID(image, s)
        let loaded = try explainer(s)
        let maxPixels = configuration.maxImagePixels
        let (v, hit) = try await cache.get(id) { [pool] in
            try await pool.run {
                let input: PreparedInput
                do { input = try loaded.input(data: image, name: "image", maxPixels: maxPixels) } catch let e as BiLRPError {
                    throw ServiceError(400, "\(e)")
                }
                do {
                    let f = try loaded.explainer.factors(input.tensor, patch: s.patch)
                    return CachedFactors(factors: f, display: input.display)
                } catch let e as BiLRPError {
                    throw ServiceError(400, "\(e)")
                }
            }
        }
        return (id, v, hit)
    }

    /// Factors by id (only for ids the cache still holds).
    func factors(id: String) async throws -> CachedFactors {
        guard let v = await cache.lookup(id) else {
            throw ServiceError(404, "unknown factor id '\(id)' (not computed here, or evicted from the cache)")
        }
        return v
    }
}
