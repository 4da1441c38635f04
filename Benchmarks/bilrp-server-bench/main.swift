// bilrp-server-bench: load on `bilrp serve` over loopback (make bench-server).
//
// Starts the server as its own process (the default model: the fetched ImageNet VGG-16, pool5,
// h = 100, paper-vgg, 128 x 128), then for 1, 4 and 16 concurrent clients measures pairs per second
// and p50 / p99 latency of POST /v1/explain, with every image new to the server (uncached: two
// factor computations per pair) and with every image already cached. The server's own overhead is
// the cached p50 at one client minus the bare library call for the same work (the pair product and
// the JSON report). Requests stay on 127.0.0.1 and are bounded in number.
import AsyncHTTPClient
import BiLRP
import BiLRPIO
import Foundation
import NIOCore

let args = Array(CommandLine.arguments.dropFirst())
func option(_ name: String) -> String? {
    guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
    return args[i + 1]
}
let binary = option("--bilrp") ?? ".build-omp/release/bilrp"
let assets = option("--assets") ?? "assets"
let levels = (option("--clients") ?? "1,4,16").split(separator: ",").compactMap { Int($0) }
let cachedRequests = Int(option("--cached-requests") ?? "200") ?? 200
let longRequests = Int(option("--long-requests") ?? "40000") ?? 40000

func percentile(_ v: [Double], _ p: Double) -> Double {
    let s = v.sorted()
    return s.isEmpty ? .nan : s[min(s.count - 1, Int((p * Double(s.count - 1)).rounded()))]
}
func f(_ v: Double, _ d: Int = 3) -> String { String(format: "%.\(d)f", v) }

// MARK: - Images: distinct PNGs from the photos (crops and flips), so uncached requests are new

let photos = ["motorcycle_left.png", "motorcycle_right.png", "chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg",
              "china.jpg", "flower.jpg"]
let base = try photos.map { try RGBImage.load(path: "\(assets)/images/\($0)").resizedAndCropped(to: 160) }
func variant(_ i: Int) throws -> Data {
    let img = base[i % base.count]
    let dx = (i / base.count) % 32, dy = (i / base.count / 32) % 32
    var px = [Float](repeating: 0, count: 128 * 128 * 3)
    for y in 0..<128 { for x in 0..<128 { for c in 0..<3 { px[(y * 128 + x) * 3 + c] = img[x + dx, y + dy, c] } } }
    return try RGBImage(width: 128, height: 128, pixels: px).pngData()
}

// MARK: - Server process

let server = Process()
server.executableURL = URL(fileURLWithPath: binary)
server.arguments = ["serve", "--port", "0", "--queue", "64", "--timeout", "600", "--log-format", "off"]
let out = Pipe()
server.standardOutput = out
try server.run()
var port = 0
var text = ""
while port == 0 {
    let d = out.fileHandleForReading.availableData
    if d.isEmpty { fatalError("bilrp serve exited: \(text)") }
    text += String(decoding: d, as: UTF8.self)
    if let r = text.range(of: "serving on http://127.0.0.1:") {
        port = Int(text[r.upperBound...].prefix { $0.isNumber }) ?? 0
    }
}
defer { server.interrupt(); server.waitUntilExit() }
let url = "http://127.0.0.1:\(port)/v1/explain"
// One connection per client (AsyncHTTPClient's default allows 8 per host, and waiting for one times out).
var clientConfiguration = HTTPClient.Configuration()
clientConfiguration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
clientConfiguration.timeout = .init(connect: .seconds(600), read: .seconds(900))
let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)

/// The server process's resident memory (VmRSS), in MB.
func serverRSS() -> Double {
    let status = (try? String(contentsOfFile: "/proc/\(server.processIdentifier)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return (Double(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) / 1024
}

func health() async throws {
    let resp = try await client.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port)/health"), timeout: .seconds(60))
    _ = try await resp.body.collect(upTo: 1 << 16)
    guard resp.status == .ok else { fatalError("health: status \(resp.status)") }
}

func explain(_ a: Data, _ b: Data) async throws -> Double {
    var req = HTTPClientRequest(url: url)
    req.method = .POST
    req.headers.add(name: "Content-Type", value: "application/json")
    let body = try JSONSerialization.data(withJSONObject: [
        "first": ["image": a.base64EncodedString()], "second": ["image": b.base64EncodedString()]])
    req.body = .bytes(ByteBuffer(bytes: body))
    let t = DispatchTime.now().uptimeNanoseconds
    let resp = try await client.execute(req, timeout: .seconds(900))
    _ = try await resp.body.collect(upTo: 64 << 20)
    guard resp.status == .ok else { fatalError("status \(resp.status)") }
    return Double(DispatchTime.now().uptimeNanoseconds - t) * 1e-9
}

/// `total` requests from `clients` concurrent clients; request i uses the pair pairs(i).
func load(clients: Int, total: Int, _ pair: @escaping @Sendable (Int) throws -> (Data, Data)) async throws -> (Double, [Double]) {
    let t = DispatchTime.now().uptimeNanoseconds
    var latencies: [Double] = []
    try await withThrowingTaskGroup(of: [Double].self) { g in
        for c in 0..<clients {
            g.addTask {
                var mine: [Double] = []
                var i = c
                while i < total {
                    let (a, b) = try pair(i)
                    mine.append(try await explain(a, b))
                    i += clients
                }
                return mine
            }
        }
        for try await l in g { latencies += l }
    }
    return (Double(total) / (Double(DispatchTime.now().uptimeNanoseconds - t) * 1e-9), latencies)
}

print("bilrp-server-bench  \(Date())  server: \(binary) serve (default model), 127.0.0.1:\(port)")
print("workload: POST /v1/explain with two 128 x 128 PNGs (base64 JSON), VGG-16 pool5, h = 100, paper-vgg")
print("")
print("clients  images     requests   pairs/s    p50 s    p99 s")
// Cached: one pair, warmed once; uncached: a fresh pair of images for every request.
let warmA = try variant(0), warmB = try variant(1)
_ = try await explain(warmA, warmB)
var cachedP50AtOne = Double.nan
var next = 2
for c in levels {
    let start = next
    let n = max(c, c == 1 ? 3 : c)  // bounded: every uncached pair costs two factor computations
    next += 2 * n
    let images = try (0..<(2 * n)).map { try variant(start + $0) }
    let (rate, lat) = try await load(clients: c, total: n) { i in (images[2 * i], images[2 * i + 1]) }
    print("\(String(repeating: " ", count: 7 - "\(c)".count))\(c)  uncached   \(String(format: "%8d", n))  \(String(format: "%8.3f", rate))  \(String(format: "%7.2f", percentile(lat, 0.5)))  \(String(format: "%7.2f", percentile(lat, 0.99)))")
    let (crate, clat) = try await load(clients: c, total: cachedRequests) { _ in (warmA, warmB) }
    if c == 1 { cachedP50AtOne = percentile(clat, 0.5) }
    print("\(String(repeating: " ", count: 7 - "\(c)".count))\(c)  cached     \(String(format: "%8d", cachedRequests))  \(String(format: "%8.1f", crate))  \(String(format: "%7.4f", percentile(clat, 0.5)))  \(String(format: "%7.4f", percentile(clat, 0.99)))")
}

// Memory over a long run: cached explanations and /health from 16 clients, RSS after warm-up and
// every quarter (a leak grows it steadily; the issue saw 835 MB -> 1.92 GB over 2.5 M requests).
if longRequests > 0 {
    print("")
    print("memory over \(longRequests) requests (half cached /v1/explain, half /health, 16 clients): server RSS in MB")
    var marks: [String] = []
    let quarter = max(1, longRequests / 4)
    _ = try await load(clients: 16, total: 2000) { _ in (warmA, warmB) }
    marks.append("after warm-up \(f(serverRSS(), 0))")
    for q in 1...4 {
        try await withThrowingTaskGroup(of: Void.self) { g in
            for c in 0..<16 {
                g.addTask {
                    var i = c
                    while i < quarter {
                        if i % 2 == 0 { _ = try await explain(warmA, warmB) } else { try await health() }
                        i += 16
                    }
                }
            }
            try await g.waitForAll()
        }
        marks.append("\(q * quarter) \(f(serverRSS(), 0))")
    }
    print(marks.joined(separator: ", "))
}

// The bare library call for the cached request's work: the pair product and the JSON report.
var s = ExplanationSettings.init()
s.model = "\(assets)/models/vgg16_imagenet.onnx"; s.layer = 31; s.size = 128
let loaded = try LoadedExplainer.load(s)
let fa = try loaded.explainer.factors(try loaded.input(data: warmA, name: "a", maxPixels: 1 << 24).tensor, patch: 8)
let fb = try loaded.explainer.factors(try loaded.input(data: warmB, name: "b", maxPixels: 1 << 24).tensor, patch: 8)
var lib: [Double] = []
for _ in 0..<50 {
    let t = DispatchTime.now().uptimeNanoseconds
    let pair = try loaded.explainer.explain(fa, fb)
    _ = try ExplanationReport(pair, loaded: loaded, sources: ("a", "b"), timings: [:]).json()
    lib.append(Double(DispatchTime.now().uptimeNanoseconds - t) * 1e-9)
}
let libMedian = percentile(lib, 0.5)
print("")
print("bare library call (pair + JSON report from cached factors): median \(f(libMedian * 1e3, 2)) ms")
print("server overhead per cached request at 1 client (p50 - library): \(f((cachedP50AtOne - libMedian) * 1e3, 2)) ms")
try await client.shutdown().get()
