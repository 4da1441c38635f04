import BiLRP
import BiLRPIO
import Foundation
import Testing

/// The `bilrp` executable next to the test bundle (SwiftPM builds it with the tests).
let bilrpBinary = Bundle.module.bundleURL.deletingLastPathComponent().appendingPathComponent("bilrp").path

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var stdoutData = Data()
}

func runBilrp(_ args: [String], environment: [String: String] = [:]) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: bilrpBinary)
    p.arguments = args
    if !environment.isEmpty {
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return RunResult(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self),
                     stdoutData: o)
}

func temporaryDirectory() throws -> URL {
    let u = FileManager.default.temporaryDirectory.appendingPathComponent("bilrp-test-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
    return u
}

/// A small setup every CLI test uses: VGG-16 features[:10] from the fixture weights, 32 x 32 inputs.
let smallArgs = ["--weights", fixturePath("vgg16_l10.safetensors"), "--arch", "vgg16", "--layer", "10",
                 "--size", "32", "--patch", "4", "--head", "random:8:3", "--preprocess", "torchvision", "--quiet"]

@Suite("The bilrp command")
struct CLITests {
    @Test("a BILRP_* setting the kernels would not understand: one line naming it, exit 1, nothing written")
    func badEnvironment() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("pair.png").path
        let a = fixturePath("images/baseline.jpg"), b = fixturePath("images/progressive.jpg")
        let r = try runBilrp(["explain", a, b, "--out", out] + smallArgs, environment: ["BILRP_ISA": "avx51"])
        #expect(r.status == 1)
        #expect(r.stderr == "bilrp: error: BILRP_ISA='avx51' is not valid: it takes avx512, avx2, neon or portable\n")
        #expect(!FileManager.default.fileExists(atPath: out))
        // The same command with a valid setting runs.
        let ok = try runBilrp(["explain", a, b, "--out", out] + smallArgs, environment: ["BILRP_ISA": "portable"])
        #expect(ok.status == 0, "\(ok.stderr)")
    }

    @Test("every BILRP_* setting: valid values pass, each invalid one is named")
    func environmentProblems() {
        let good = ["BILRP_ISA": "avx2", "BILRP_THREADS": "3", "BILRP_CONV": "direct", "BILRP_WINOGRAD": "chunked",
                    "BILRP_SPARSE": "0.15", "BILRP_PATCH_SIDE": "auto", "BILRP_BUFFER_CACHE_MB": "0", "BILRP_TOKEN": "x"]
        #expect(CKernelsBackend.environmentProblems(good).isEmpty)
        #expect(CKernelsBackend.environmentProblems(["BILRP_ISA": "", "BILRP_SPARSE": "always",
                                                     "BILRP_PATCH_SIDE": "12"]).isEmpty)
        let bad = ["BILRP_ISA": "sse", "BILRP_THREADS": "0", "BILRP_CONV": "fft", "BILRP_WINOGRAD": "yes",
                   "BILRP_SPARSE": "-1", "BILRP_PATCH_SIDE": "some", "BILRP_BUFFER_CACHE_MB": "1.5"]
        let problems = CKernelsBackend.environmentProblems(bad)
        #expect(problems.count == bad.count)
        for (name, value) in bad {
            #expect(problems.contains { $0.hasPrefix("\(name)='\(value)' is not valid") }, "\(name)")
        }
    }

    @Test("explain: NPY equals the library's R, JSON is consistent with it, pictures are PNGs")
    func explain() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let a = fixturePath("images/baseline.jpg"), b = fixturePath("images/progressive.jpg")
        let r = try runBilrp(["explain", a, b] + smallArgs + [
            "--out", dir.appendingPathComponent("pair.png").path, "--heatmap", dir.appendingPathComponent("heat.png").path,
            "--matrix", dir.appendingPathComponent("matrix.png").path,
            "--json", dir.appendingPathComponent("pair.json").path, "--npy", dir.appendingPathComponent("R.npy").path, "--top", "3"])
        #expect(r.status == 0, "\(r.stderr)")
        // The library with the same settings.
        var s = ExplanationSettings()
        s.weights = fixturePath("vgg16_l10.safetensors"); s.layer = 10; s.size = 32; s.patch = 4; s.head = "random:8:3"
        s.preprocess = "torchvision"
        let loaded = try LoadedExplainer.load(s)
        let pair = try loaded.explainer.explain(try loaded.input(a).tensor, try loaded.input(b).tensor, patch: 4)
        let R = try NPY.read(path: dir.appendingPathComponent("R.npy").path)
        #expect(R.shape == [64, 64])
        #expect(R.data == pair.relevance, "the CLI and the library compute the same R")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("pair.json"))) as! [String: Any]
        let conservation = json["conservation"] as! [String: Double]
        let sumR = R.data.reduce(0.0) { $0 + Double($1) }
        #expect(abs(conservation["relevance_sum"]! - sumR) <= 1e-9 * max(1, abs(sumR)))
        #expect(abs((json["similarity"] as! Double) - Double(pair.similarity)) <= 1e-6 * abs(Double(pair.similarity)))
        let top = (json["top_positive"] as! [[String: Any]])
        #expect(top.count == 3)
        let maxIndex = R.data.indices.max { R.data[$0] < R.data[$1] }!
        let first = top[0]["first"] as! [String: Int], second = top[0]["second"] as! [String: Int]
        #expect(first["index"]! * 64 + second["index"]! == maxIndex)
        #expect(abs((top[0]["value"] as! Double) - Double(R.data[maxIndex])) <= 1e-6 * abs(Double(R.data[maxIndex])))
        for key in ["model", "inputs", "timings", "matrix_layout", "top_negative", "patch", "dot"] { #expect(json[key] != nil, "\(key)") }
        for name in ["pair.png", "heat.png", "matrix.png"] {
            let img = try RGBImage.load(path: dir.appendingPathComponent(name).path)
            #expect(img.width > 64 && img.height > 32)
        }
    }

    @Test("errors: one clear line, exit code 1, nothing written", arguments: [
        (["explain", "/nonexistent.png", "B"], "no such file: '/nonexistent.png'"),
        (["explain", "A", "CORRUPT"], "cannot decode image"),
        (["explain", "A", "B", "--rules", "paper-vgggg"], "unknown rule preset 'paper-vgggg'"),
        (["explain", "A", "B", "--rules", "0:zb;1-:gama=1"], "unknown rule 'gama=1'"),
        (["explain", "A", "B", "--layer", "99"], "layer index 99 is out of range"),
        (["explain", "A", "B", "--projection", "PROJ"], "projection matrix"),
        (["explain", "A", "B", "--head", "random:x"], "head 'random:x'"),
        (["explain", "A", "B", "--head", "random:1000000000"], "1000000000 outputs (h)"),
        (["heatmap", "A", "--output", "8"], "--output 8 is out of range: the head has 8 outputs"),
        (["explain", "A", "B", "--font", "/nonexistent.ttf"], "cannot load the font '/nonexistent.ttf'"),
    ])
    func errors(args: [String], message: String) throws {
        try checkError(args: args, message: message, status: 1)
    }

    @Test("usage errors keep ArgumentParser's exit code 64; options with fixed values list them", arguments: [
        (["explain", "A", "B", "--similarity", "euclid"], "The value 'euclid' is invalid for '--similarity <similarity>'. Please provide one of 'dot' and 'cosine'"),
        (["explain", "A", "B", "--preprocess", "bgr"], "Please provide one of 'auto', 'torchvision', 'caffe' or 'ink'"),
        (["explain", "A", "B", "--clip", "0"], "--clip must be > 0"),
        (["explain", "A", "B", "--patch", "0"], "--patch must be at least 1"),
        (["explain", "A", "B", "--background", "purple"], "Please provide one of 'grey' and 'color'"),
        (["explain", "A", "B", "--heatmap-layout", "side"], "Please provide one of 'overlay' and 'squares'"),
        (["explain", "A", "B", "--scale", "99"], "--scale must be 0 (automatic) to 64 (got 99)"),
    ])
    func usageErrors(args: [String], message: String) throws {
        try checkError(args: args, message: message, status: 64)
    }

    func checkError(args: [String], message: String, status: Int32) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let corrupt = dir.appendingPathComponent("corrupt.png")
        try Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13]).write(to: corrupt)
        let proj = dir.appendingPathComponent("proj.npy")
        try NPY.encode(try Tensor(shape: [3, 5], data: [Float](repeating: 1, count: 15))).write(to: proj)
        let json = dir.appendingPathComponent("out.json").path
        let replaced = args.map { a -> String in
            switch a {
            case "A": return fixturePath("images/baseline.jpg")
            case "B": return fixturePath("images/progressive.jpg")
            case "CORRUPT": return corrupt.path
            case "PROJ": return proj.path
            default: return a
            }
        }
        // The case's own options replace those of smallArgs.
        var base = smallArgs
        for opt in args where opt.hasPrefix("--") {
            if let i = base.firstIndex(of: opt) { base.removeSubrange(i...(i + 1)) }
        }
        var full = replaced + base
        if args.first == "explain" { full += ["--json", json] }
        let r = try runBilrp(full)
        #expect(r.status == status, "status \(r.status), stderr \(r.stderr)")
        let lines = r.stderr.split(separator: "\n")
        if status == 1 {
            #expect(lines.count == 1 && lines[0].hasPrefix("bilrp: error: ") && r.stderr.contains(message), "\(r.stderr)")
        } else {
            #expect(r.stderr.contains(message), "\(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: json), "no output is written on error")
    }

    @Test("inspect lists the layers and the --layer value of each")
    func inspect() throws {
        let r = try runBilrp(["inspect", fixturePath("vgg16_l10.onnx"), "--size", "32"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("layers numbered by module names"))
        #expect(r.stdout.contains("MaxPool2d(2x2, s2)") && r.stdout.contains("[128, 8, 8]"))
        let rows = r.stdout.split(separator: "\n").filter { $0.contains("Conv2d") }
        #expect(rows.count == 4)
        // A graph: columns wide enough for long op names, each node's torch module.
        let g = try runBilrp(["inspect", fixturePath("ops_graph.onnx"), "--size", "20"])
        #expect(g.status == 0)
        let conv2 = g.stdout.split(separator: "\n").first { $0.contains("/conv2/Conv") }.map(String.init) ?? ""
        #expect(conv2.contains(" conv2 ") && conv2.contains("Conv2d(8, 8, 3x3, s1, p2, d2, g2)  ") && conv2.contains("[8, 20, 20]"), "\(conv2)")
        #expect(g.stdout.contains("Slice[:, :, 2:]  ") && g.stdout.contains("module (--layer NAME)"), "\(g.stdout)")
    }

    @Test("a ResNet from safetensors with torchvision's names, cut by stage name: the CLI's R equals the library's; inspect lists the graph")
    func resnet() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let weights = dir.appendingPathComponent("resnet18.safetensors").path
        try SafetensorsFile.write(try ResNet.resnet18.randomWeights(seed: 4).tensors, to: weights)
        let a = fixturePath("images/baseline.jpg"), b = fixturePath("images/progressive.jpg")
        let npy = dir.appendingPathComponent("R.npy").path
        let args = ["--weights", weights, "--arch", "resnet18", "--layer", "layer2", "--size", "64", "--patch", "8",
                    "--head", "random:6:1", "--rules", "epsilon-plus-flat", "--preprocess", "torchvision", "--quiet"]
        let r = try runBilrp(["explain", a, b, "--npy", npy, "--json", dir.appendingPathComponent("p.json").path] + args)
        #expect(r.status == 0, "\(r.stderr)")
        var s = ExplanationSettings()
        s.weights = weights; s.arch = "resnet18"; s.layer = "layer2"; s.size = 64; s.head = "random:6:1"
        s.rules = "epsilon-plus-flat"; s.preprocess = "torchvision"
        let loaded = try LoadedExplainer.load(s)
        let pair = try loaded.explainer.explain(try loaded.input(a).tensor, try loaded.input(b).tensor, patch: 8)
        #expect(try NPY.read(path: npy).data == pair.relevance)
        let bad = try runBilrp(["explain", a, b] + args.map { $0 == "layer2" ? "layer7" : $0 })
        #expect(bad.status == 1 && bad.stderr.contains("resnet18 has no node or stage named 'layer7'"), "\(bad.stderr)")
        let index = try runBilrp(["explain", a, b] + args.map { $0 == "layer2" ? "12" : $0 })
        #expect(index.status == 1 && index.stderr.contains("resnet18 is a graph, not a chain of layers"), "\(index.stderr)")
        let i = try runBilrp(["inspect", weights, "--arch", "resnet18", "--size", "64"])
        #expect(i.status == 0)
        #expect(i.stdout.contains("layer4.1.add") && i.stdout.contains("layer4.1.bn2, layer4.0") && i.stdout.contains("[512, 2, 2]"))
        #expect(i.stdout.contains("parameters: 11689512"))
        let structure = try runBilrp(["inspect", "--arch", "resnet50"])
        #expect(structure.status == 0 && structure.stdout.contains("layer4.2.conv3") && structure.stdout.contains("[2048, 7, 7]"))
    }

    @Test("heatmap: the map sums to the explained output with a conservative preset")
    func heatmap() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let npy = dir.appendingPathComponent("map.npy").path
        let r = try runBilrp(["heatmap", fixturePath("images/baseline.jpg"), "--output", "2", "--npy", npy,
                              "--out", dir.appendingPathComponent("h.png").path] + smallArgs)
        #expect(r.status == 0, "\(r.stderr)")
        let map = try NPY.read(path: npy)
        #expect(map.shape == [32, 32])
        let parts = r.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Double($0) }
        #expect(parts.count == 2 && abs(parts[0] - Double(map.data.reduce(0, +))) <= 1e-3 * max(1, abs(parts[0])))
    }

    @Test("--version, and --json - / --npy - write to standard output (the summary then goes to stderr)")
    func stdoutOutputs() throws {
        let v = try runBilrp(["--version"])
        #expect(v.status == 0 && v.stdout == BiLRPVersion.string + "\n")
        let a = fixturePath("images/baseline.jpg"), b = fixturePath("images/progressive.jpg")
        let j = try runBilrp(["explain", a, b] + smallArgs + ["--json", "-"])
        #expect(j.status == 0, "\(j.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any])
        #expect(json["similarity"] != nil && j.stderr.contains("similarity"))
        let n = try runBilrp(["explain", a, b] + smallArgs + ["--npy", "-"])
        #expect(n.status == 0)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("R.npy").path
        _ = try runBilrp(["explain", a, b] + smallArgs + ["--npy", file])
        let written = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect(n.stdoutData == written, "stdout carries exactly the NPY bytes --npy FILE writes")
        #expect(try NPY.decode(n.stdoutData).shape == [64, 64])
    }
}
