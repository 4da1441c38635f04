import CoreMetrics
import Foundation
import Prometheus

/// The service's metrics, through swift-metrics into a Prometheus registry of the service's own
/// (no process-wide bootstrap: several services in one process, as in the tests, stay apart).
/// Names and labels follow Prometheus conventions: seconds, `_total` counters, `route` and `code`.
final class ServerMetrics: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    private let lock = NSLock()
    private var durations: [String: CoreMetrics.Timer] = [:]
    private var requests: [String: CoreMetrics.Counter] = [:]
    let inFlight: CoreMetrics.Meter
    let queueDepth: CoreMetrics.Gauge
    let cacheEntries: CoreMetrics.Gauge
    let cacheBytes: CoreMetrics.Gauge
    let cacheHits: CoreMetrics.Counter
    let cacheMisses: CoreMetrics.Counter
    let factorComputations: CoreMetrics.Counter
    let explainers: CoreMetrics.Gauge
    let variantBytes: CoreMetrics.Gauge
    let explainerBuilds: CoreMetrics.Counter

    /// Request durations from 5 ms to 2 min.
    static let buckets: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

    init(version: String) {
        var f = PrometheusMetricsFactory(registry: registry)
        f.defaultDurationHistogramBuckets = Self.buckets.map { .nanoseconds(Int64($0 * 1e9)) }
        factory = f
        inFlight = CoreMetrics.Meter(label: "bilrp_requests_in_flight", factory: f)
        queueDepth = CoreMetrics.Gauge(label: "bilrp_queue_depth", factory: f)
        cacheEntries = CoreMetrics.Gauge(label: "bilrp_cache_entries", factory: f)
        cacheBytes = CoreMetrics.Gauge(label: "bilrp_cache_bytes", factory: f)
        cacheHits = CoreMetrics.Counter(label: "bilrp_cache_hits_total", factory: f)
        cacheMisses = CoreMetrics.Counter(label: "bilrp_cache_misses_total", factory: f)
        factorComputations = CoreMetrics.Counter(label: "bilrp_factor_computations_total", factory: f)
        explainers = CoreMetrics.Gauge(label: "bilrp_explainers", factory: f)
        variantBytes = CoreMetrics.Gauge(label: "bilrp_explainer_variant_bytes", factory: f)
        explainerBuilds = CoreMetrics.Counter(label: "bilrp_explainer_builds_total", factory: f)
        CoreMetrics.Gauge(label: "bilrp_build_info", dimensions: [("version", version)], factory: f).record(1)
    }

    /// One finished request (scrapes of /metrics are not traffic and are not recorded).
    func record(route: String, code: Int, seconds: Double) {
        let key = "\(route)|\(code)"
        let (timer, counter) = lock.withLock { () -> (CoreMetrics.Timer, CoreMetrics.Counter) in
            let dims = [("route", route), ("code", "\(code)")]
            if durations[key] == nil {
                durations[key] = CoreMetrics.Timer(label: "bilrp_request_duration_seconds", dimensions: dims, factory: factory)
                requests[key] = CoreMetrics.Counter(label: "bilrp_requests_total", dimensions: dims, factory: factory)
            }
            return (durations[key]!, requests[key]!)
        }
        timer.recordNanoseconds(Int64(seconds * 1e9))
        counter.increment()
    }

    func render() -> String { registry.emitToString() }
}
