import BiLRP
import BiLRPIO
import BiLRPText
import Foundation
import NIOPosix

/// Time a request spent waiting for a compute slot and computing, for its log line. Set per
/// request as a task local; child tasks (and the cache's shared computation) inherit it.
final class RequestStats: @unchecked Sendable {
    private let lock = NSLock()
    private var wait = 0.0, compute = 0.0
    private var hit: Bool?

    @TaskLocal static var current: RequestStats?

    func add(wait w: Double, compute c: Double) { lock.withLock { wait += w; compute += c } }
    /// A request that needed any computation is a miss; one served wholly from the cache a hit.
    func cache(hit h: Bool) { lock.withLock { hit = (hit ?? true) && h } }
    var values: (wait: Double, compute: Double, hit: Bool?) { lock.withLock { (wait, compute, hit) } }
}

/// Runs blocking explanation work on dedicated threads, `slots` at a time, with a bounded queue.
/// Work whose cancellation is set before it starts is dropped without running.
final class ComputePool: @unchecked Sendable {
    private let pool: NIOThreadPool
    private let lock = NSLock()
    private var admitted = 0
    private let limit: Int
    private let slots: Int

    init(slots: Int, queueLimit: Int) {
        self.slots = max(1, slots)
        limit = max(0, queueLimit)
        pool = NIOThreadPool(numberOfThreads: self.slots)
        pool.start()
    }

    /// Requests admitted and not started beyond the running ones (for /metrics and /ready).
    var queueDepth: Int { lock.withLock { max(0, admitted - slots) } }
    var queueFull: Bool { lock.withLock { admitted >= slots + limit } }

    func run<T: Sendable>(cancellation: Cancellation? = nil, _ work: @escaping @Sendable () throws -> T) async throws -> T {
        let ok = lock.withLock { () -> Bool in
            if admitted >= slots + limit { return false }
            admitted += 1
            return true
        }
        guard ok else {
            throw ServiceError(429, "the server is busy: explanations running or queued fill the queue", retryAfter: 2)
        }
        defer { lock.withLock { admitted -= 1 } }
        let queued = DispatchTime.now().uptimeNanoseconds
        let stats = RequestStats.current
        return try await pool.runIfActive {
            let start = DispatchTime.now().uptimeNanoseconds
            defer {
                stats?.add(wait: Double(start - queued) * 1e-9,
                           compute: Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
            }
            try cancellation?.check()
            return try work()
        }
    }

    func shutdown() async throws { try await pool.shutdownGracefully() }
}

/// What the cache keeps per image and settings.
struct CachedFactors: Sendable {
    var factors: RelevanceFactors
    var display: RGBImage
    /// The settings the factors were computed with (a request that sends the id must ask for the same).
    var settings: ExplanationSettings
    var bytes: Int { factors.a.count * 4 + factors.embedding.count * 4 + display.pixels.count * 4 + 256 }
}

/// What the factor cache holds: an image's factors, or a text's (one memory bound for both).
enum CacheEntry: Sendable {
    case image(CachedFactors)
    case text(TextFactors)

    var bytes: Int {
        switch self {
        case .image(let v): v.bytes
        case .text(let v):
            v.factors.a.count * 4 + v.factors.embedding.count * 4 + v.text.text.utf8.count
                + v.text.tokens.reduce(0) { $0 + $1.text.utf8.count + 48 } + 256
        }
    }
}

/// A memory-bounded LRU of relevance factors keyed by content hash and settings. Concurrent
/// requests for the same uncached key share one computation; a waiter that is cancelled (its
/// request timed out) leaves at once, and the computation is cancelled when no waiter is left.
actor FactorCache {
    private final class Flight: @unchecked Sendable {  // touched only on the actor (the flag locks itself)
        let cancellation = Cancellation()
        var waiters: [Int: CheckedContinuation<CacheEntry, any Error>] = [:]
    }

    private var entries: [String: (value: CacheEntry, tick: Int)] = [:]
    private var flights: [String: Flight] = [:]
    private var tick = 0, nextWaiter = 0
    private(set) var bytes = 0
    let capacity: Int
    private(set) var hits = 0, misses = 0

    let metrics: ServerMetrics?

    init(capacity: Int, metrics: ServerMetrics? = nil) { self.capacity = capacity; self.metrics = metrics }

    var count: Int { entries.count }

    func countHit() { hits += 1; metrics?.cacheHits.increment() }

    func lookup(_ key: String) -> CacheEntry? {
        guard let e = entries[key] else { return nil }
        tick += 1
        entries[key] = (e.value, tick)
        return e.value
    }

    /// The cached value, or the result of `compute` (run once for concurrent callers of one key).
    func get(_ key: String, compute: @escaping @Sendable (Cancellation) async throws -> CacheEntry)
        async throws -> (CacheEntry, Bool) {
        if let v = lookup(key) { countHit(); return (v, true) }
        let flight: Flight
        if let f = flights[key] {
            countHit()
            flight = f
        } else {
            misses += 1
            metrics?.cacheMisses.increment()
            flight = Flight()
            flights[key] = flight
            Task {
                let result: Result<CacheEntry, any Error>
                do { result = .success(try await compute(flight.cancellation)) } catch { result = .failure(error) }
                self.finish(key, flight, result)
            }
        }
        nextWaiter += 1
        let id = nextWaiter
        let shared = flight.waiters.isEmpty == false
        let v = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<CacheEntry, any Error>) in
                flight.waiters[id] = c
            }
        } onCancel: {
            Task { await self.leave(key, flight, id) }
        }
        return (v, shared)
    }

    private func leave(_ key: String, _ flight: Flight, _ id: Int) {
        guard let c = flight.waiters.removeValue(forKey: id) else { return }
        c.resume(throwing: CancellationError())
        if flight.waiters.isEmpty {
            flight.cancellation.cancel()
            if flights[key] === flight { flights[key] = nil }  // a new request starts afresh
        }
    }

    private func finish(_ key: String, _ flight: Flight, _ result: Result<CacheEntry, any Error>) {
        if flights[key] === flight { flights[key] = nil }
        if case let .success(v) = result, !flight.cancellation.isCancelled { insert(key, v) }
        let waiters = flight.waiters
        flight.waiters = [:]
        for c in waiters.values { c.resume(with: result) }
    }

    private func insert(_ key: String, _ v: CacheEntry) {
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
