// bilrp-bench: the speed and memory of a VGG-16 pair explanation, measured here.
//
//   bilrp-bench                 ours: per size and thread count, seconds per pair (median, min),
//                               effective GFLOP/s, peak RSS, backward time per layer, conv kernel
//                               efficiency, cached-pair time, memory as h grows
//   bilrp-bench --peers         also PyTorch (Benchmarks/peers/torch_bilrp.py), runs alternating with
//                               ours, after checking that all agree
//
// Workload: VGG-16 features[:31] (pool5), Gaussian head h = 100, paper-vgg rules, 8 x 8 patches, one
// image pair, 128 x 128 and 224 x 224. Real ImageNet weights and the motorcycle pair when
// assets/ is present, seeded random weights and inputs otherwise (the arithmetic is the same).
// Every configuration runs in a child process, so each peak RSS is its own.
import ArgumentParser
import BiLRP
import BiLRPIO
import BiLRPText
import CKernels
import Foundation

// MARK: - Arguments

struct BenchOptions: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bilrp-bench",
        abstract: "Speed and memory of BiLRP pair explanations (VGG-16 and ResNet-50), optionally beside PyTorch.")

    @Option(help: "Directory with models/vgg16_imagenet.onnx and images/ (seeded weights and inputs without it).")
    var assets = "assets"
    @Option(help: "Timed pairs per configuration (after a warm-up).")
    var runs = 5
    @Option(help: "Input sizes, comma-separated (default: 128,224).", transform: commaInts)
    var sizes = [128, 224]
    @Option(help: "Thread counts, comma-separated (default: 1,2).", transform: commaInts)
    var threads = [1, 2]
    @Option(name: .customLong("memory-h"), help: "Head sizes h of the memory table, comma-separated (default: 100,400,1600).", transform: commaInts)
    var memoryH = [100, 400, 1600]
    @Option(help: "Instruction-set paths of the pair table, comma-separated (default: every path this CPU runs).",
            transform: isaList)
    var isas: [String]?
    @Flag(help: "Also PyTorch side by side (Benchmarks/peers), runs alternating with ours.")
    var peers = false
    @Option(help: "The Python with torch for --peers.")
    var python = ".venv-bench/bin/python"
    @Option(name: .customLong("peer-runs"), help: "Timed runs of ours and the batched peers.")
    var peerRuns = 5
    @Option(name: .customLong("author-runs"), help: "Timed runs of the authors'-style peer (slow).")
    var authorRuns = 2
    @Flag(name: .customLong("kernels-only"), help: "Only the convolution kernel efficiency table.")
    var kernelsOnly = false
    @Flag(name: .customLong("resnet-only"), help: "Only the ResNet-50 workload (and its peers with --peers).")
    var resnetOnly = false
    @Flag(name: .customLong("text-only"), help: "Only the text workload (all-MiniLM-L6-v2; its peers with --peers).")
    var textOnly = false
    @Option(help: .hidden)
    var child: String?

    static func commaInts(_ s: String) throws -> [Int] {
        let v = s.split(separator: ",").map { Int($0) }
        guard !v.isEmpty, v.allSatisfy({ ($0 ?? 0) > 0 }) else {
            throw ValidationError("expected positive integers separated by commas, got '\(s)'")
        }
        return v.map { $0! }
    }

    static func isaList(_ s: String) throws -> [String] {
        let v = s.split(separator: ",").map(String.init)
        let known = ["avx512", "avx2", "neon", "portable"]
        guard !v.isEmpty, v.allSatisfy(known.contains) else {
            throw ValidationError("expected paths among \(known.joined(separator: ", ")), got '\(s)'")
        }
        return v
    }
}

let options = BenchOptions.parseOrExit()
let assets = options.assets
let runs = options.runs
let sizes = options.sizes
let threadCounts = options.threads
let memoryH = options.memoryH
let peers = options.peers
let python = options.python
let outputs = 100
let patch = 8

func stderr(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }
func seconds(_ body: () throws -> Void) rethrows -> Double {
    let t = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - t) * 1e-9
}
func median(_ v: [Double]) -> Double {
    let s = v.sorted()
    return s.isEmpty ? .nan : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
}
/// Peak resident memory of this process: VmHWM from /proc/self/status. Not getrusage's ru_maxrss,
/// which Linux carries across execve: a child spawned by a parent that had grown to 1.1 GB reported
/// 1.1 GB whatever it used itself.
func peakRSSKiB() -> Int {
    if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
       let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
       let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") {
        return kib
    }
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return u.ru_maxrss
}

// MARK: - Workload

let realModel = "\(assets)/models/vgg16_imagenet.onnx"
let haveAssets = FileManager.default.fileExists(atPath: realModel)

/// The second workload: ResNet-50 cut at layer4 (2048 x 7 x 7 at 224 x 224), seeded weights (no
/// pretrained ResNet can be fetched here; the arithmetic does not depend on the values), the same
/// inputs as the VGG workload. Rules epsilon-plus-flat: epsilon-gamma-box (the issue's choice)
/// costs the same (one term per convolution, z^B's three on conv1 aside), but on these weights its
/// relevance explodes (sum R / y = -8e12 at layer4: gamma's denominators cross zero before the
/// residual sums), so no two float32 computations of it agree (PyTorch's and ours differed by
/// 1.1 max |R|) and its times would compare numbers that mean nothing. BILRP_BENCH_RESNET_RULES
/// selects it anyway.
struct ResNetWorkload {
    static let rules = ProcessInfo.processInfo.environment["BILRP_BENCH_RESNET_RULES"] ?? "epsilon-plus-flat"
    var graph: Graph
    var x1: Tensor, x2: Tensor
    var source: String

    init(size: Int) throws {
        graph = try ResNet.resnet50.graph(cut: "layer4", seed: 50)
        // The pair only: loading the VGG-16 file (528 MB) here would count in this child's peak RSS.
        (x1, x2) = try Workload.pair(size: size, preprocessing: .torchvision)
        source = "ResNet-50 to layer4, seeded weights; " + (haveAssets ? "motorcycle stereo pair" : "seeded inputs")
    }

    func explainer(h: Int) throws -> Explainer {
        try Explainer(graph: graph, head: .randomProjection(outputs: h, seed: 0), composite: try .named(Self.rules),
                      bounds: Preprocessing.torchvision.bounds,
                      blockSize: ProcessInfo.processInfo.environment["BILRP_BENCH_BLOCK"].flatMap(Int.init))
    }

    /// Direct-convolution FLOPs of one forward pass (2 per multiply-add), and of the head.
    func forwardFLOPs(size: Int, h: Int) throws -> (convs: Double, head: Double) {
        let shapes = try graph.shapes(for: Shape3(3, size, size))
        var total = 0.0
        for n in graph.nodes {
            if case let .layer(.conv2d(c)) = n.op {
                total += 2.0 * Double(shapes[n.output]!.count) * Double(c.inChannels / c.groups * c.kernelH * c.kernelW)
            }
        }
        return (total, 2.0 * Double(shapes[graph.output]!.count) * Double(h))
    }
}

struct Workload {
    var model: SequentialModel
    var preprocessing: Preprocessing
    var x1: Tensor, x2: Tensor
    var source: String

    init(size: Int, preprocessing forced: Preprocessing? = nil) throws {
        if haveAssets {
            model = try ONNXImporter.load(path: realModel, cut: .layers(31)).chain!
            preprocessing = forced ?? .caffe
            source = "ImageNet VGG-16 (assets), motorcycle stereo pair"
        } else {
            model = try VGG.vgg16.features(layers: 31, seed: 1)
            preprocessing = .torchvision
            source = "seeded random VGG-16 weights and inputs (no assets)"
        }
        (x1, x2) = try Self.pair(size: size, preprocessing: preprocessing)
    }

    /// The motorcycle stereo pair (assets), else two seeded random images.
    static func pair(size: Int, preprocessing: Preprocessing) throws -> (Tensor, Tensor) {
        if haveAssets {
            let load = { (name: String) in
                try PreparedInput.load(path: "\(assets)/images/\(name)", size: size, preprocessing: preprocessing).tensor
            }
            return (try load("motorcycle_left.png"), try load("motorcycle_right.png"))
        }
        let pre = haveAssets ? preprocessing : .torchvision
        var r = SplitMix64(seed: 2)
        let rgb = { try Tensor(shape: [3, size, size], data: (0..<(3 * size * size)).map { _ in Float(r.nextUniform()) }) }
        return (try pre.normalize(rgb: try rgb()), try pre.normalize(rgb: try rgb()))
    }

    func explainer(h: Int) throws -> Explainer {
        try Explainer(model: model, head: .randomProjection(outputs: h, seed: 0), composite: try .preset("paper-vgg"),
                      bounds: preprocessing.bounds)
    }

    /// Direct-convolution FLOPs of one forward pass (2 per multiply-add), and of the head.
    func forwardFLOPs(size: Int, h: Int) throws -> (convs: Double, head: Double) {
        var s = Shape3(3, size, size)
        var total = 0.0
        for (i, l) in model.layers.enumerated() {
            let o = try l.outputShape(s, index: i)
            if case let .conv2d(c) = l {
                total += 2.0 * Double(o.count) * Double(c.inChannels * c.kernelH * c.kernelW)
            }
            s = o
        }
        return (total, 2.0 * Double(s.count) * Double(h))
    }
}

// MARK: - Child: one configuration

struct ChildResult: Codable {
    var size: Int, threads: Int, h: Int
    var pairSeconds: [Double]
    var rssKiB: Int
    /// The explainer's weights in every prepared form (Explainer.preparedBytes).
    var preparedBytes: Int
    var forwardSeconds: Double
    var layers: [String]
    var layerSeconds: [Double]
    var patchSideLayers: Int
    var isa: String
    var openmp: Bool
    var source: String
    /// Start-up: reading the model file (VGG-16: the ONNX file) and the pair of images, then
    /// building the explainer (rule forms of every layer prepared); the first explanation (cold).
    var loadSeconds: Double
    var prepareSeconds: Double
    var firstPairSeconds: Double
}

func child(size: Int, threads: Int, h: Int, runs: Int, profile: Bool, resnet: Bool = false) throws {
    CKernelsBackend.threads = threads
    var rw: ResNetWorkload? = nil, w: Workload? = nil, built: Explainer? = nil
    let load = try seconds {
        if resnet { rw = try ResNetWorkload(size: size) } else { w = try Workload(size: size) }
    }
    let prepare = try seconds { built = try rw?.explainer(h: h) ?? w!.explainer(h: h) }
    let (x1, x2) = rw.map { ($0.x1, $0.x2) } ?? (w!.x1, w!.x2)
    let ex = built!
    var times: [Double] = []
    let first = try seconds { _ = try ex.explain(x1, x2, patch: patch) }  // also the warm-up
    if runs == 1 { times.append(first) }
    for _ in 0..<(runs > 1 ? runs : 0) { times.append(try seconds { _ = try ex.explain(x1, x2, patch: patch) }) }
    var names: [String] = [], layerSeconds: [Double] = [], fwd = 0.0, side = 0
    if profile {
        let (_, p) = try ex.profiledFactors(x1, patch: patch)
        names = p.layers.map(\.name); layerSeconds = p.layers.map(\.seconds); fwd = p.forwardSeconds
        side = p.patchSideLayers
    }
    let r = ChildResult(size: size, threads: threads, h: h, pairSeconds: times, rssKiB: peakRSSKiB(),
                        preparedBytes: ex.preparedBytes, forwardSeconds: fwd, layers: names, layerSeconds: layerSeconds, patchSideLayers: side,
                        isa: CKernelsBackend.activeISA, openmp: CKernelsBackend.usesOpenMP, source: rw?.source ?? w!.source,
                        loadSeconds: load, prepareSeconds: prepare, firstPairSeconds: first)
    print(String(decoding: try JSONEncoder().encode(r), as: UTF8.self))
}

if let spec = options.child {
    let v = spec.split(separator: ",").map { Int($0)! }
    try child(size: v[0], threads: v[1], h: v[2], runs: v[3], profile: v[4] == 1, resnet: v.count > 5 && v[5] == 1)
    exit(0)
}

/// The instruction-set paths this CPU runs, best first (`--isas a,b` to choose): the pair table
/// has rows for each, every path's explanation in a child process with BILRP_ISA set.
let isaPaths: [String] = options.isas ?? {
    switch Int(ck_isa_supported()) {
    case CK_ISA_AVX512: return ["avx512", "avx2", "portable"]
    case CK_ISA_AVX2: return ["avx2", "portable"]
    case CK_ISA_NEON: return ["neon", "portable"]
    default: return ["portable"]
    }
}()

func runChild(size: Int, threads: Int, h: Int, runs: Int, profile: Bool, resnet: Bool = false,
              isa: String? = nil) throws -> ChildResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
    if let isa {
        var env = ProcessInfo.processInfo.environment
        env["BILRP_ISA"] = isa
        p.environment = env
    }
    p.arguments = ["--child", "\(size),\(threads),\(h),\(runs),\(profile ? 1 : 0),\(resnet ? 1 : 0)", "--assets", assets]
    let pipe = Pipe()
    p.standardOutput = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw BiLRPError.io("benchmark child failed (\(size), \(threads), \(h))") }
    return try JSONDecoder().decode(ChildResult.self, from: data)
}

// MARK: - Report

func pad(_ s: String, _ n: Int) -> String { String(repeating: " ", count: max(0, n - s.count)) + s }
func f(_ v: Double, _ digits: Int = 2) -> String { String(format: "%.\(digits)f", v) }

let nt = threadCounts.max() ?? 2
let peak = Dictionary(uniqueKeysWithValues: threadCounts.map { ($0, ck_fma_peak_gflops(Int32($0))) })
// MARK: - Text (all-MiniLM-L6-v2)

/// Seeded sentences of about 20-40 word pieces, for the documents of the query workload.
func benchSentences(_ count: Int, seed: UInt64) -> [String] {
    let words = ("the a of model search query document embedding similarity relevance token pair attention layer "
        + "retrieval ranks explains which words matched their users cosine sentence transformer propagation "
        + "semantic index answer question library server benchmark engine neural vector dense sparse").split(separator: " ")
    var r = SplitMix64(seed: seed)
    return (0..<count).map { _ in
        (0..<(14 + Int(r.next() % 16))).map { _ in String(words[Int(r.next() % UInt64(words.count))]) }.joined(separator: " ") + "."
    }
}

/// A pair of two 32-token texts (ours with the token side and with the h backward passes; PyTorch
/// batched and one backward per dimension with --peers, alternating), and a query against 100
/// documents from cached factors.
func textSection(withPeers: Bool) throws {
    let dir = URL(fileURLWithPath: options.assets).appendingPathComponent("models/all-MiniLM-L6-v2")
    print("")
    guard FileManager.default.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path) else {
        print("text workload skipped: \(dir.path) is missing (make assets fetches it)")
        return
    }
    CKernelsBackend.threads = nt
    let encoder = try SentenceEncoder.load(directory: dir.path).truncating(at: 32)
    // Both longer than 32 word pieces: truncated to exactly 32 tokens.
    let t1 = "Semantic search and retrieval-augmented generation rank documents by the cosine of sentence embeddings, "
        + "and their users keep asking which words of the query matched which words of the document they were shown."
    let t2 = "Which words of the query matched which words of the document, and how much did each of those token pairs "
        + "contribute to the similarity that the sentence encoder computed for the two texts in the end?"
    let up = try TextExplainer(encoder: encoder)
    let down = try TextExplainer(encoder: encoder, kernels: CKernelsBackend(patchSideLayers: 0))
    let ours = try up.explain(t1, t2)
    let (n1, n2) = (ours.first.tokens.count, ours.second.tokens.count)
    print("text: all-MiniLM-L6-v2 (6 layers, h = 384, cosine, cp-lrp), a pair of \(n1) and \(n2) tokens, \(nt) threads, "
          + "median of \(runs) runs after a warm-up")
    let backward = try down.explain(t1, t2)
    let scale = ours.pair.relevance.map(abs).max()!
    let diff = zip(ours.pair.relevance, backward.pair.relevance).map { abs($0 - $1) }.max()! / scale
    var tUp: [Double] = [], tDown: [Double] = []
    for _ in 0..<runs {
        tUp.append(try seconds { _ = try up.explain(t1, t2) })
        tDown.append(try seconds { _ = try down.explain(t1, t2) })
    }
    print("  ours, token side (\(n1) + \(n2) functionals up)      \(f(median(tUp) * 1e3, 1)) ms/pair")
    print("  ours, backward (384 maps down per text)          \(f(median(tDown) * 1e3, 1)) ms/pair   (R agrees to \(String(format: "%.1e", diff)) of max |R|)")
    // A query against 100 documents whose factors are cached.
    let docs = benchSentences(100, seed: 21)
    var cached: [TextFactors] = []
    let tCache = try seconds { cached = try docs.map { try up.factors($0) } }
    var tQuery: [Double] = []
    for _ in 0..<runs {
        tQuery.append(try seconds {
            let q = try up.factors(t2)
            for d in cached { _ = try up.explain(q, d) }
        })
    }
    let tokens = cached.map(\.text.tokens.count)
    print("  query vs 100 documents (\(tokens.min()!)-\(tokens.max()!) tokens): documents' factors \(f(tCache, 2)) s once, "
          + "then \(f(median(tQuery) * 1e3, 1)) ms per query (its factors and 100 pair products)")
    guard withPeers else { return }
    let work = FileManager.default.temporaryDirectory.appendingPathComponent("bilrp-bench-text-\(getpid())")
    try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: work) }
    for name in ["model.safetensors", "config.json"] {
        try FileManager.default.createSymbolicLink(at: work.appendingPathComponent(name),
                                                   withDestinationURL: dir.appendingPathComponent(name).absoluteURL)
    }
    let ids = try JSONSerialization.data(withJSONObject: ["ids": [ours.first.ids, ours.second.ids]])
    try ids.write(to: work.appendingPathComponent("texts.json"))
    try NPY.write(try Tensor(shape: [n1, n2], data: ours.pair.relevance), to: work.appendingPathComponent("R_ours.npy").path)
    let kinds = ["batched", "authors"]
    var peers = try kinds.map { _ in try Peer(dir: work.path, threads: nt, script: "torch_text_bilrp.py") }
    var diffs: [String] = []
    for (k, kind) in kinds.enumerated() {
        diffs.append("\(kind) \(String(format: "%.2e", try peers[k].ask("check \(kind)")["diff"] as! Double))")
    }
    print("  beside PyTorch (max |R_torch - R_ours| / max |R_ours|: \(diffs.joined(separator: ", "))), runs alternating:")
    var tOurs: [Double] = [], t: [String: [Double]] = [:]
    for i in 0..<max(options.peerRuns, options.authorRuns) {
        if i < options.peerRuns { tOurs.append(try seconds { _ = try up.explain(t1, t2) }) }
        for (k, kind) in kinds.enumerated() where i < (kind == "authors" ? options.authorRuns : options.peerRuns) {
            t[kind, default: []].append(try peers[k].ask("time \(kind)")["seconds"] as! Double)
        }
    }
    let o = median(tOurs)
    print("    ours" + String(repeating: " ", count: 46) + "\(f(o * 1e3, 1)) ms/pair (median of \(tOurs.count))")
    let labels = ["batched": "PyTorch batched (384 dimensions, one backward)", "authors": "PyTorch, one backward per dimension"]
    for (k, kind) in kinds.enumerated() {
        let rss = try peers[k].ask("rss")["rss_kib"] as! Int
        _ = try? peers[k].ask("quit")
        let m = median(t[kind]!)
        print("    " + labels[kind]!.padding(toLength: 50, withPad: " ", startingAt: 0)
              + "\(f(m * 1e3, 1)) ms/pair (median of \(t[kind]!.count))   ratio \(f(m / o, 1))x   peak RSS \(f(Double(rss) / 1024, 0)) MB")
    }
}

if options.textOnly {
    print("bilrp-bench  \(Date())   machine: \(ProcessInfo.processInfo.activeProcessorCount) CPUs, ISA \(CKernelsBackend.activeISA)")
    try textSection(withPeers: options.peers)
    exit(0)
}

print("bilrp-bench  \(Date())")
print("machine: \(ProcessInfo.processInfo.activeProcessorCount) CPUs, ISA \(CKernelsBackend.activeISA), OpenMP \(CKernelsBackend.usesOpenMP)")
for t in threadCounts.sorted() { print("measured fp32 FMA peak, \(t) thread(s): \(f(peak[t]!, 0)) GFLOP/s") }
print("workload: VGG-16 features[:31], head h = \(outputs), paper-vgg, patch \(patch), median and min of \(runs) runs after a warm-up")
print("FLOPs per pair = 2 inputs x (1 + h) x direct-conv forward FLOPs (each of the h backward passes counted as one forward)")
let kernelsOnly = options.kernelsOnly
let resnetOnly = options.resnetOnly
let resnetSize = 224
print("")
if !kernelsOnly && !resnetOnly {
    print("pair table: every path this CPU runs (\(isaPaths.joined(separator: ", "))); paths after the first at \(nt) "
          + "threads and at most 3 runs; % of the peak measured with \(CKernelsBackend.activeISA)")
    print("  size  ISA       threads   s/pair (median)    min   GFLOP/s  % of peak   peak RSS MB")
}
var results: [Int: ChildResult] = [:]
/// Median s/pair at nt threads per (ISA, size), for the ratios to PyTorch per path.
var pathMedians: [String: [Int: Double]] = [:]
for size in kernelsOnly || resnetOnly ? [] : sizes {
    let w = try Workload(size: size)
    let flops = try w.forwardFLOPs(size: size, h: outputs)
    let perPair = 2 * Double(1 + outputs) * flops.convs
    for (i, isa) in isaPaths.enumerated() {
        for t in i == 0 ? threadCounts.sorted() : [nt] {
            let r = try runChild(size: size, threads: t, h: outputs, runs: i == 0 ? runs : min(runs, 3),
                                 profile: i == 0 && t == nt, isa: isa)
            if i == 0 && t == nt { results[size] = r }
            let med = median(r.pairSeconds)
            if t == nt { pathMedians[r.isa, default: [:]][size] = med }
            let g = perPair / med * 1e-9
            print(pad("\(size)", 6) + "  " + r.isa.padding(toLength: 8, withPad: " ", startingAt: 0) + pad("\(t)", 9)
                  + pad(f(med, 3), 18) + pad(f(r.pairSeconds.min()!, 3), 8) + pad(f(g, 0), 10)
                  + pad(f(100 * g / max(peak[t]!, 1), 1), 11) + pad(f(Double(r.rssKiB) / 1024, 0), 14))
        }
    }
    print("        (\(f(perPair * 1e-12, 3)) TFLOP per pair at \(size) x \(size); \(results[size]?.source ?? ""))")
    if let r = results[size] {
        print("        start-up, \(r.threads) threads: model and images read \(f(r.loadSeconds, 3)) s, explainer prepared "
              + "\(f(r.prepareSeconds, 3)) s, first (cold) pair \(f(r.firstPairSeconds, 3)) s")
    }
}

// ResNet-50 to layer4 at 224 x 224: the graph engine's workload.
var resnetResult: ChildResult? = nil
if !kernelsOnly {
    let w = try ResNetWorkload(size: resnetSize)
    let flops = try w.forwardFLOPs(size: resnetSize, h: outputs)
    let perPair = 2 * Double(1 + outputs) * flops.convs
    print("")
    print("ResNet-50 to layer4 (\(ResNetWorkload.rules), h = \(outputs), patch \(patch)); \(w.source)")
    print("  size  threads   s/pair (median)    min   GFLOP/s  % of peak   peak RSS MB")
    for t in threadCounts.sorted() {
        let r = try runChild(size: resnetSize, threads: t, h: outputs, runs: min(runs, 3), profile: t == nt, resnet: true)
        if t == nt { resnetResult = r }
        let med = median(r.pairSeconds)
        let g = perPair / med * 1e-9
        print(pad("\(resnetSize)", 6) + pad("\(t)", 9) + pad(f(med, 3), 18) + pad(f(r.pairSeconds.min()!, 3), 8)
              + pad(f(g, 0), 10) + pad(f(100 * g / max(peak[t]!, 1), 1), 11) + pad(f(Double(r.rssKiB) / 1024, 0), 14))
    }
    if let r = resnetResult {
        let total = r.layerSeconds.reduce(0, +)
        print("  backward per node, one input, \(nt) threads (forward \(f(r.forwardSeconds, 3)) s, backward \(f(total, 3)) s); the ten slowest:")
        for (name, s) in zip(r.layers, r.layerSeconds).sorted(by: { $0.1 > $1.1 }).prefix(10) {
            print("    " + name.padding(toLength: 52, withPad: " ", startingAt: 0) + pad(f(s, 3), 8) + " s")
        }
    }
}
if resnetOnly && !peers { exit(0) }
if resnetOnly { print("(--resnet-only: the VGG sections skipped)") }

// The default fast paths (Winograd, and the sparse backward where the relevance is sparse) against
// the direct path on the real workload.
print("")
for size in sizes where !kernelsOnly && !resnetOnly {
    CKernelsBackend.threads = nt
    let w = try Workload(size: size)
    func pair(_ c: CKernelsBackend.Convolution) throws -> [Float] {
        try Explainer(model: w.model, head: .randomProjection(outputs: outputs, seed: 0), composite: try .preset("paper-vgg"),
                      bounds: w.preprocessing.bounds, kernels: CKernelsBackend(convolution: c))
            .explain(w.x1, w.x2, patch: patch).relevance
    }
    let a = try pair(.winograd), b = try pair(.direct)
    let scale = b.map(abs).max()!
    let err = zip(a, b).map { abs($0 - $1) }.max()! / scale
    print("fast paths (patch side, Winograd, sparse) vs direct at \(size) x \(size): max |R_fast - R_direct| / max |R| = \(String(format: "%.2e", err))  (BILRP_CONV=direct selects direct)")
    // The forward convolution's two paths sum in different orders; R is sensitive to that where a
    // denominator z is small, which bounds how closely any two float32 implementations can agree.
    let old = ck_conv_set_implicit(0)
    let packed = try pair(.winograd)
    ck_conv_set_implicit(old)
    let err2 = zip(a, packed).map { abs($0 - $1) }.max()! / scale
    print("forward as implicit GEMM vs packed im2col panels at \(size) x \(size): max |dR| / max |R| = \(String(format: "%.2e", err2))")
}

for size in sizes {
    guard let r = results[size], !r.layers.isEmpty else { continue }
    print("")
    print("backward time per layer, one input, \(size) x \(size), \(nt) threads (forward: \(f(r.forwardSeconds, 3)) s);")
    print("the first \(r.patchSideLayers) layers from the patch side (marked *), meeting the maps at the input of layer \(r.patchSideLayers)")
    for (i, (name, s)) in zip(r.layers, r.layerSeconds).enumerated() where s >= 0.0005 {
        let mark = i < r.patchSideLayers ? "* " : "  "
        print(mark + name.padding(toLength: 52, withPad: " ", startingAt: 0) + pad(f(s, 3), 8) + " s")
    }
}

// Dense convolution kernels on the VGG-16 shapes (weights packed once per layer, as explanations
// do; im2col rows read in place from a padded image on AVX-512), as a fraction of the FMA peak.
// The machine is shared: each round measures the peak right before the kernel, and the table
// gives medians over the rounds of both and of their ratio.
print("")
print("convolution forward on VGG-16 shapes (median of 7 rounds, each: FMA peak, then the fastest of 3 kernel calls)")
print("  shape                      threads  GFLOP/s   peak   % of peak")
for t in (resnetOnly ? [] : threadCounts.sorted()) {
    for (c, k, hw) in [(64, 64, 128), (128, 128, 64), (256, 256, 32), (512, 512, 16), (64, 64, 224), (256, 256, 56)] {
        let g = ConvGeometry(inChannels: c, height: hw, width: hw, outChannels: k, kernelH: 3, kernelW: 3, padH: 1, padW: 1)
        var r = SplitMix64(seed: 3)
        // Activations 64-byte aligned, as an explanation's buffers are (Buffer).
        let x = UnsafeMutablePointer<Float>(OpaquePointer(UnsafeMutableRawPointer.allocate(byteCount: g.inCount * 4, alignment: 64)))
        let y = UnsafeMutablePointer<Float>(OpaquePointer(UnsafeMutableRawPointer.allocate(byteCount: g.outCount * 4, alignment: 64)))
        defer { UnsafeMutableRawPointer(x).deallocate(); UnsafeMutableRawPointer(y).deallocate() }
        for i in 0..<g.inCount { x[i] = Float(r.nextNormal()) }
        let wt = (0..<(k * c * 9)).map { _ in Float(r.nextNormal()) }
        CKernelsBackend.threads = t
        let kernels = CKernelsBackend(), packed = kernels.prepareForward(weight: wt, g)!
        try kernels.convForward(x, g, prepared: packed, bias: nil, y)
        let flops = 2.0 * Double(g.outCount) * Double(c * 9)
        var rates: [Double] = [], peaks: [Double] = [], ratios: [Double] = []
        for _ in 0..<7 {
            let pk = ck_fma_peak_gflops(Int32(t))
            // The fastest of three calls: the first after the FMA loop also pays the threads'
            // wake-up and refilling the caches with the image and weights, which an explanation's
            // layer-after-layer calls do not.
            let s = (0..<3).map { _ in
                seconds { try! kernels.convForward(x, g, prepared: packed, bias: nil, y) }
            }.min()!
            rates.append(flops / s * 1e-9); peaks.append(pk); ratios.append(flops / s * 1e-9 / max(pk, 1))
        }
        print("  \(c) -> \(k) at \(hw) x \(hw)".padding(toLength: 29, withPad: " ", startingAt: 0) + pad("\(t)", 7)
              + pad(f(median(rates), 0), 9) + pad(f(median(peaks), 0), 7) + pad(f(100 * median(ratios), 1), 10))
    }
}
CKernelsBackend.threads = nt

if kernelsOnly { exit(0) }
if !resnetOnly {

// A pair from cached factors: 256 x 256 patches, h = 100.
do {
    var r = SplitMix64(seed: 4)
    let a = (0..<(256 * outputs)).map { _ in Float(r.nextNormal()) }, b = (0..<(256 * outputs)).map { _ in Float(r.nextNormal()) }
    var R = [Float](repeating: 0, count: 256 * 256)
    let k = CKernelsBackend()
    var times: [Double] = []
    for _ in 0..<201 {
        times.append(seconds { R.withUnsafeMutableBufferPointer { try! k.pairProduct(p: 256, q: 256, h: outputs, a, b, $0.baseAddress!) } })
    }
    print("")
    print("pair from cached factors (256 x 256 patches, h = \(outputs)): median \(f(median(times) * 1e3, 3)) ms over 200 runs")
}

// Memory as h grows (one run each, blocks of maps keep it bounded).
print("")
print("peak RSS as h grows, 128 x 128, \(nt) threads:")
for h in memoryH {
    let r = try runChild(size: 128, threads: nt, h: h, runs: 1, profile: false)
    print("  h = \(h)".padding(toLength: 12, withPad: " ", startingAt: 0) + pad(f(Double(r.rssKiB) / 1024, 0), 6) + " MB"
          + "   (\(f(r.pairSeconds[0], 2)) s per pair)")
}

}

// MARK: - Peers

guard peers else {
    try textSection(withPeers: false)
    exit(0)
}

struct Peer {
    let process = Process()
    let input = Pipe(), output = Pipe()
    var buffer = Data()

    init(dir: String, threads: Int, script name: String = "torch_bilrp.py") throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("peers/\(name)").path
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script, dir, "\(patch)", "\(threads)"]
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        _ = try readLine()
    }

    mutating func readLine() throws -> [String: Any] {
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = buffer[..<nl]
                buffer = Data(buffer[(nl + 1)...])
                return try JSONSerialization.jsonObject(with: Data(line)) as! [String: Any]
            }
            let d = output.fileHandleForReading.availableData
            guard !d.isEmpty else { throw BiLRPError.io("the PyTorch peer stopped") }
            buffer.append(d)
        }
    }

    mutating func ask(_ command: String) throws -> [String: Any] {
        input.fileHandleForWriting.write(Data((command + "\n").utf8))
        return try readLine()
    }
}

/// The `bilrp` command line built beside this benchmark.
let bilrpCLI = (Bundle.main.executableURL ?? URL(fileURLWithPath: CommandLine.arguments[0]))
    .deletingLastPathComponent().appendingPathComponent("bilrp")

/// One whole `bilrp explain` process, as a user runs it: start, model read, inputs decoded and
/// preprocessed, the explainer prepared, the pair explained, R written (NPY). Returns the wall-clock
/// seconds and max |R_process - R_ours| / max |R_ours|, so the timed runs are checked to compute
/// our explanation.
func wholeProcess(_ arguments: [String], isa: String, ours: PairExplanation, dir: URL) throws -> (seconds: Double, diff: Double) {
    let npy = dir.appendingPathComponent("R_process.npy").path
    let p = Process()
    p.executableURL = bilrpCLI
    var env = ProcessInfo.processInfo.environment
    env["BILRP_ISA"] = isa
    p.environment = env
    p.arguments = ["explain"] + arguments + ["--threads", "\(nt)", "--npy", npy, "--quiet"]
    p.standardOutput = FileHandle.nullDevice
    let err = Pipe()
    p.standardError = err
    let t = try seconds {
        try p.run()
        p.waitUntilExit()
    }
    guard p.terminationStatus == 0 else {
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        throw BiLRPError.io("bilrp explain failed (BILRP_ISA=\(isa)): \(message)")
    }
    let r = try NPY.read(path: npy).data
    guard r.count == ours.relevance.count else { throw BiLRPError.io("bilrp explain wrote \(r.count) values, ours has \(ours.relevance.count)") }
    let scale = ours.relevance.map(abs).max() ?? 1
    let diff: Float = zip(r, ours.relevance).map { abs($0 - $1) }.max()! / scale
    return (t, Double(diff))
}

/// Whole-process times per instruction-set path (the first path every round, the others at most
/// 3), run inside the loop that alternates with the peers.
struct WholeProcessTimes {
    var times: [String: [Double]] = [:]
    var diff = 0.0

    mutating func run(round: Int, _ arguments: [String], ours: PairExplanation, dir: URL) throws {
        for (i, isa) in isaPaths.enumerated() where i == 0 ? round < peerRuns : round < min(peerRuns, 3) {
            let r = try wholeProcess(arguments, isa: isa, ours: ours, dir: dir)
            times[isa, default: []].append(r.seconds)
            diff = max(diff, r.diff)
        }
    }

    func report() {
        guard !times.isEmpty else { return }
        let paths = isaPaths.filter { times[$0] != nil }
        print("    ours as whole `bilrp explain` processes (start, model and inputs read, explained, R written; R agrees to "
              + "\(String(format: "%.2e", diff)) of max |R|): "
              + paths.map { "\($0) \(f(median(times[$0]!), 3)) s (median of \(times[$0]!.count))" }.joined(separator: ", "))
    }

    func ratios(_ peer: Double) {
        let paths = isaPaths.filter { times[$0] != nil }
        guard !paths.isEmpty else { return }
        print("      ours as whole processes: " + paths.map { "BILRP_ISA=\($0) ratio \(f(peer / median(times[$0]!), 2))x" }
            .joined(separator: ", "))
    }
}

/// What a peer needs besides the weights to compute exactly our explanation (the head, the input
/// bounds, the inputs), and our R to check against; returns our explanation.
func writePeerInputs(_ dir: URL, features d: Int, bounds b: InputBounds, _ x1: Tensor, _ x2: Tensor,
                     _ ex: Explainer) throws -> PairExplanation {
    try NPY.write(try Tensor(shape: [outputs, d], data: SimilarityHead.gaussianMatrix(outputs: outputs, inputs: d, seed: 0)),
                  to: dir.appendingPathComponent("projection.npy").path)
    try NPY.write(try Tensor(shape: [2, 3], data: b.lower + b.upper), to: dir.appendingPathComponent("bounds.npy").path)
    try NPY.write(x1, to: dir.appendingPathComponent("x1.npy").path)
    try NPY.write(x2, to: dir.appendingPathComponent("x2.npy").path)
    let ours = try ex.explain(x1, x2, patch: patch)
    try NPY.write(try Tensor(shape: [ours.rows, ours.columns], data: ours.relevance), to: dir.appendingPathComponent("R_ours.npy").path)
    return ours
}

print("")
print("side by side with PyTorch (\(nt) threads each; runs alternate ours, batched, blocked, authors' style)")
let peerRuns = options.peerRuns
let authorRuns = options.authorRuns

// ResNet-50 to layer4 at 224 x 224 against the PyTorch batched and blocked peers.
do {
    CKernelsBackend.threads = nt
    let w = try ResNetWorkload(size: resnetSize)
    let ex = try w.explainer(h: outputs)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bilrp-bench-resnet-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    try SafetensorsFile.write(try ResNet.resnet50.randomWeights(seed: 50).tensors, to: dir.appendingPathComponent("model.safetensors").path)
    let d = try w.graph.shapes(for: Shape3(3, resnetSize, resnetSize))[w.graph.output]!.count
    let ours = try writePeerInputs(dir, features: d, bounds: Preprocessing.torchvision.bounds, w.x1, w.x2, ex)
    try Data(ResNetWorkload.rules.utf8).write(to: dir.appendingPathComponent("rules.txt"))
    let kinds = ["batched", "blocked"]
    var peers = try kinds.map { _ in try Peer(dir: dir.path, threads: nt, script: "torch_resnet_bilrp.py") }
    var diffs: [String] = []
    for (k, kind) in kinds.enumerated() {
        diffs.append("\(kind) \(String(format: "%.2e", try peers[k].ask("check \(kind)")["diff"] as! Double))")
    }
    let runsHere = min(peerRuns, 3)
    print("  ResNet-50 to layer4, \(ResNetWorkload.rules), \(resnetSize) x \(resnetSize): max |R_torch - R_ours| / max |R_ours|: "
          + diffs.joined(separator: ", ") + "   (sum R / y = \(String(format: "%.3g", Double(ours.relevance.reduce(0, +)) / Double(ours.similarity))))")
    // The same pair as `bilrp explain` processes: the seeded weights under torchvision names, the
    // preprocessed inputs as NPY.
    let cli = [dir.appendingPathComponent("x1.npy").path, dir.appendingPathComponent("x2.npy").path,
               "--weights", dir.appendingPathComponent("model.safetensors").path, "--arch", "resnet50", "--layer", "layer4",
               "--head", "random:\(outputs):0", "--similarity", "dot", "--rules", ResNetWorkload.rules,
               "--patch", "\(patch)", "--size", "0", "--preprocess", "torchvision"]
    var whole = WholeProcessTimes()
    var tOurs: [Double] = [], t: [String: [Double]] = [:]
    for round in 0..<runsHere {
        tOurs.append(try seconds { _ = try ex.explain(w.x1, w.x2, patch: patch) })
        try whole.run(round: round, cli, ours: ours, dir: dir)
        for (k, kind) in kinds.enumerated() { t[kind, default: []].append(try peers[k].ask("time \(kind)")["seconds"] as! Double) }
    }
    let o = median(tOurs)
    let oursRSS = resnetResult.map { " (ours: \(f(Double($0.rssKiB) / 1024, 0)) MB)" } ?? ""
    print("    ours" + String(repeating: " ", count: 42) + "\(f(o, 3)) s/pair (median of \(tOurs.count))")
    whole.report()
    for (k, kind) in kinds.enumerated() {
        let rss = try peers[k].ask("rss")["rss_kib"] as! Int
        _ = try? peers[k].ask("quit")
        let m = median(t[kind]!)
        let label = kind == "batched" ? "PyTorch batched (all h maps in one batch)" : "PyTorch blocked (16 maps a batch)"
        print("    " + label.padding(toLength: 46, withPad: " ", startingAt: 0)
              + "\(f(m, 3)) s/pair (median of \(t[kind]!.count))   ratio \(f(m / o, 2))x   peak RSS \(f(Double(rss) / 1024, 0)) MB" + oursRSS)
        whole.ratios(m)
    }
}
if resnetOnly { exit(0) }
try textSection(withPeers: true)

for size in sizes {
    CKernelsBackend.threads = nt
    let w = try Workload(size: size)
    let ex = try w.explainer(h: outputs)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bilrp-bench-\(size)-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    // Everything the peer needs, so it computes exactly our explanation.
    var named: [String: Tensor] = [:]
    for (i, l) in w.model.layers.enumerated() {
        if case let .conv2d(c) = l {
            named["features.\(i).weight"] = try Tensor(shape: [c.outChannels, c.inChannels, 3, 3], data: c.weight)
            named["features.\(i).bias"] = try Tensor(shape: [c.outChannels], data: c.bias!)
        }
    }
    try SafetensorsFile.write(named, to: dir.appendingPathComponent("model.safetensors").path)
    let d = try w.model.shapes(for: Shape3(3, size, size)).last!.count
    let ours = try writePeerInputs(dir, features: d, bounds: w.preprocessing.bounds, w.x1, w.x2, ex)
    // The same pair as `bilrp explain` processes: the README's command on the ONNX file and the
    // photos (with assets only: without them the workload's weights exist in this process only).
    let cli = ["\(assets)/images/motorcycle_left.png", "\(assets)/images/motorcycle_right.png", "--model", realModel,
               "--layer", "31", "--head", "random:\(outputs):0", "--similarity", "dot", "--rules", "paper-vgg",
               "--patch", "\(patch)", "--size", "\(size)", "--preprocess", "caffe"]
    var whole = WholeProcessTimes()
    // One process per kind, so each one's peak RSS is its own.
    let kinds = ["batched", "blocked", "authors"]
    let labels = ["batched": "PyTorch batched (all h maps in one batch)", "blocked": "PyTorch blocked (16 maps a batch)",
                  "authors": "authors' style (one backward per output)"]
    var peers = try kinds.map { _ in try Peer(dir: dir.path, threads: nt) }
    var diffs: [String] = []
    for (k, kind) in kinds.enumerated() {
        diffs.append("\(kind) \(String(format: "%.2e", try peers[k].ask("check \(kind)")["diff"] as! Double))")
    }
    print("  \(size) x \(size): max |R_torch - R_ours| / max |R_ours|: " + diffs.joined(separator: ", "))
    var tOurs: [Double] = [], t: [String: [Double]] = [:]
    for i in 0..<max(peerRuns, authorRuns) {
        if i < peerRuns { tOurs.append(try seconds { _ = try ex.explain(w.x1, w.x2, patch: patch) }) }
        if haveAssets { try whole.run(round: i, cli, ours: ours, dir: dir) }
        for (k, kind) in kinds.enumerated() where i < (kind == "authors" ? authorRuns : peerRuns) {
            t[kind, default: []].append(try peers[k].ask("time \(kind)")["seconds"] as! Double)
        }
    }
    let o = median(tOurs)
    let oursRSS = results[size].map { " (ours: \(f(Double($0.rssKiB) / 1024, 0)) MB)" } ?? ""
    print("    ours" + String(repeating: " ", count: 42) + "\(f(o, 3)) s/pair (median of \(tOurs.count))")
    whole.report()
    for (k, kind) in kinds.enumerated() {
        let rss = try peers[k].ask("rss")["rss_kib"] as! Int
        _ = try? peers[k].ask("quit")
        let m = median(t[kind]!)
        print("    " + labels[kind]!.padding(toLength: 46, withPad: " ", startingAt: 0)
              + "\(f(m, 3)) s/pair (median of \(t[kind]!.count))   ratio \(f(m / o, 2))x   peak RSS \(f(Double(rss) / 1024, 0)) MB"
              + oursRSS)
        // The other paths from the pair table of this run, against the same PyTorch times.
        for isa in isaPaths.dropFirst() {
            guard let p = pathMedians[isa]?[size] else { continue }
            print("      ours with BILRP_ISA=\(isa) (pair table): \(f(p, 3)) s/pair   ratio \(f(m / p, 2))x")
        }
        whole.ratios(m)
    }
}
