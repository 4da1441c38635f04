import BiLRP
import BiLRPIO
import Foundation
import Testing

/// The committed tables model (scripts/train-tables.py), by source path.
let tablesWeights: String = {
    var dir = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { dir.deleteLastPathComponent() }
    return dir.appendingPathComponent("models/tables").path
}()

@Suite("The tables model (bigram network) against its PyTorch module (scripts/make-tables-fixtures.py)")
struct TablesTests {
    let fixture: SafetensorsFile
    let weights: SafetensorsFile

    init() throws {
        fixture = try SafetensorsFile(path: fixturePath("tables/tables.safetensors"))
        weights = try SafetensorsFile(path: tablesWeights + "/tables.safetensors")
    }

    func page(_ name: String) throws -> Tensor {
        let img = try RGBImage.load(path: fixturePath("tables/page_\(name).png"))
        return try Preprocessing.ink.normalize(rgb: img.planar)
    }

    func reference(_ name: String) throws -> [Float] {
        guard let t = try fixture.tensor(named: name) else { throw BiLRPError.missingTensor(name) }
        return t.data
    }

    /// An LRP-0 explainer of the graph's whole output (the maps H and the bigram maps are long: the
    /// output limit is raised for them).
    func explainer(_ graph: Graph, rules: String = "*:zero") throws -> Explainer {
        try Explainer(graph: graph, head: .identity, similarity: .dot, composite: try Composite.named(rules),
                      bounds: Preprocessing.ink.bounds, limits: ResourceLimits(maxOutputs: 1 << 20, maxBytes: 8 << 30))
    }

    @Test("the digit maps H, the bigram layer on its own and phi equal PyTorch's (relative 1e-4)")
    func forward() throws {
        for name in ["a", "b"] {
            let x = try page(name)
            let H = try explainer(try TablesModel.graph(weights: weights, cut: "H")).embedding(x)
            expectClose(H, try reference("\(name).H"), tol: 1e-4, "H of page \(name)")
            let phi = try explainer(try TablesModel.graph(weights: weights)).embedding(x)
            let expected = try reference("\(name).phi")
            try #require(expected.reduce(0, +) > 1, "the fixture's page \(name) has bigrams (a trained detector)")
            expectClose(phi, expected, tol: 1e-4, "phi of page \(name)")
        }
        let window = try #require(try fixture.tensor(named: "a.H_window"))
        let layer = try Graph(input: "H", nodes: try TablesModel.bigramNodes(from: "H"), output: "bigrams")
        let maps = try explainer(layer).embedding(window)
        let expected = try reference("a.bigrams_window")
        #expect(expected.contains { $0 > 0 }, "the window holds bigrams")
        expectClose(maps, expected, tol: 1e-5, "bigram maps of a window of H")
    }

    @Test("BiLRP with LRP-0 (gradient x input here): both pages' A and R equal PyTorch's within 1e-4 of their max")
    func factors() throws {
        let ex = try explainer(try TablesModel.graph(weights: weights))
        let fa = try ex.factors(try page("a"), patch: 8), fb = try ex.factors(try page("b"), patch: 8)
        let (Aa, Ab) = (try reference("a.A"), try reference("b.A"))
        expectClose(fa.a, Aa, tol: 1e-4, "A of page a")
        expectClose(fb.a, Ab, tol: 1e-4, "A of page b")
        let pair = try ex.explain(fa, fb)
        var R = [Float](repeating: 0, count: fa.grid.count * fb.grid.count)
        for i in 0..<fa.grid.count {
            for j in 0..<fb.grid.count {
                var s = 0.0
                for m in 0..<100 { s += Double(Aa[i * 100 + m]) * Double(Ab[j * 100 + m]) }
                R[i * fb.grid.count + j] = Float(s)
            }
        }
        expectClose(pair.relevance, R, tol: 1e-4, "R")
        // Conservation: the bias-free bigram layer and sum pooling pass relevance on whole; only the
        // detector head's thresholds absorb some.
        #expect(pair.conservation.relevanceSum > 0 && pair.similarity > 0)
    }

    @Test("bilrp explain --model tables: the committed model with its defaults (ink, pages as they are, identity head, rules tables); conservation within 1e-4")
    func cli() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = dir.appendingPathComponent("pair.json").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bilrpBinary)
        p.currentDirectoryURL = URL(fileURLWithPath: tablesWeights).deletingLastPathComponent().deletingLastPathComponent()
        p.arguments = ["explain", fixturePath("tables/page_a.png"), fixturePath("tables/page_b.png"), "--model", "tables",
                       "--json", json, "--quiet"]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        let ex = try Explainer(graph: try TablesModel.graph(weights: weights), head: .identity, similarity: .dot,
                               composite: try Composite.named("tables"), bounds: Preprocessing.ink.bounds)
        let y = try ex.explain(try ex.factors(try page("a"), patch: 8), try ex.factors(try page("b"), patch: 8)).similarity
        #expect(abs((report["similarity"] as! Double) - Double(y)) <= 1e-5 * Double(y))
        let c = try #require(report["conservation"] as? [String: Any])
        #expect((c["relative_error"] as! Double) <= 1e-4, "the tables preset conserves (z+ on the thresholded head)")
        let model = try #require(report["model"] as? [String: Any])
        #expect(model["rules"] as? String == Composite.presets["tables"] && model["head"] as? String == "identity")
        #expect(model["preprocess"] as? String == "ink" && model["outputs"] as? Int == 100)
    }

    @Test("the JSON names the bigram that carries each top pair; a page smaller than 16 x 16 pixels is an error naming its size")
    func bigramsAndBadPages() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let args = ["--weights", tablesWeights + "/tables.safetensors", "--arch", "tables", "--preprocess", "ink", "--size", "0",
                    "--head", "identity", "--rules", "tables", "--quiet"]
        let r = try runBilrp(["explain", fixturePath("tables/page_a.png"), fixturePath("tables/page_b.png"), "--json", "-", "--top", "5"] + args)
        #expect(r.status == 0, "\(r.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: r.stdoutData) as? [String: Any])
        let top = try #require(report["top_positive"] as? [[String: Any]])
        #expect(top.count == 5)
        // Recompute the carrying bigram of the top pair from the library's factors.
        let ex = try explainer(try TablesModel.graph(weights: weights), rules: "tables")
        let pair = try ex.explain(try ex.factors(try page("a"), patch: 8), try ex.factors(try page("b"), patch: 8))
        let first = try #require(top[0]["first"] as? [String: Any]), second = try #require(top[0]["second"] as? [String: Any])
        let d = pair.dominantOutput(first["index"] as! Int, second["index"] as! Int)
        #expect(top[0]["bigram"] as? String == "\(d.output / 10)\(d.output % 10)")
        let share = try #require(top[0]["bigram_share"] as? Double)
        #expect(share > 0 && share <= 1.0001, "a positive pair's largest term is a share in (0, 1]")
        for (w, h) in [(1, 1), (40, 12)] {
            let path = dir.appendingPathComponent("page_\(w)x\(h).png").path
            try AtomicFile.write(try RGBImage(width: w, height: h, pixels: [Float](repeating: 1, count: w * h * 3)).pngData(), to: path)
            let bad = try runBilrp(["explain", path, fixturePath("tables/page_b.png")] + args)
            #expect(bad.status == 1)
            #expect(bad.stderr.contains("is a page of \(w) x \(h) pixels; the tables model needs at least 16 x 16"), "\(bad.stderr)")
        }
        // A page too large for the memory limit (three quarters of the machine's; about 7.7 GiB per
        // megapixel at h = 100): refused before any allocation, naming the estimate and the input.
        let megapixels = Int(ProcessInfo.processInfo.physicalMemory >> 30) / 5 + 2
        let (w, h) = (1000, megapixels * 1000)
        let huge = dir.appendingPathComponent("huge.png").path
        try AtomicFile.write(try RGBImage(width: w, height: h, pixels: [Float](repeating: 1, count: w * h * 3)).pngData(), to: huge)
        let bad = try runBilrp(["explain", huge, fixturePath("tables/page_b.png")] + args)
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("the explanation would need about") && bad.stderr.contains("input [1, \(h), \(w)]"), "\(bad.stderr)")
    }

    @Test("the ONNX export (models/tables/tables.onnx) is the same model: the same phi and A as the safetensors graph")
    func onnx() throws {
        let onnx = try ONNXImporter.load(path: tablesWeights + "/tables.onnx")
        let fromONNX = try explainer(onnx.graph), fromWeights = try explainer(try TablesModel.graph(weights: weights))
        let x = try page("b")
        let (a, b) = (try fromONNX.factors(x, patch: 8), try fromWeights.factors(x, patch: 8))
        expectClose(a.embedding, b.embedding, tol: 1e-5, "phi")
        expectClose(a.a, b.a, tol: 1e-5, "A")
    }

    /// The committed eval set (`make-tables.py --pairs 6 --small`, seed 2026): three pairs that
    /// share a table, with their digit-pair boxes, and three that do not.
    @Test("bilrp eval on rendered pairs: BiLRP's top-20 pairs join the same bigram (>= 0.8), as recounted from the boxes; y separates shared tables")
    func bigramPrecision() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let set = fixturePath("tables-eval")
        let json = dir.appendingPathComponent("eval.json").path
        let r = try runBilrp(["eval", "--pairs", set + "/pairs.csv", "--steps", "0", "--json", json, "--weights", tablesWeights + "/tables.safetensors",
                              "--arch", "tables", "--preprocess", "ink", "--size", "0", "--head", "identity", "--rules", "tables", "--quiet"])
        #expect(r.status == 0, "\(r.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        let layer = try #require((report["layers"] as? [[String: Any]])?.first)
        let pairs = try #require(layer["pairs"] as? [[String: Any]])
        #expect(pairs.map { $0["related"] as? Bool } == [true, false, true, false, true, false])
        func precision(_ pair: [String: Any], _ ordering: String) -> Double? {
            let o = (pair["orderings"] as? [[String: Any]])?.first { $0["name"] as? String == ordering }
            return (o?["correspondence"] as? [String: Any])?["precision_at_k"] as? Double
        }
        let shared = pairs.filter { $0["related"] as? Bool == true }
        let bilrp = shared.compactMap { precision($0, "bilrp:tables") }
        #expect(bilrp.count == 3)
        #expect(bilrp.reduce(0, +) / 3 >= 0.8, "top-20 same-bigram precision \(bilrp)")
        #expect(shared.allSatisfy { (precision($0, "random") ?? 1) < 0.1 }, "random pairs rarely hold one bigram")
        #expect(pairs.filter { $0["related"] as? Bool == false }.allSatisfy { ($0["orderings"] as? [Any])?.isEmpty == true },
                "without curves or labels a pair is only embedded")
        let separation = try #require(layer["separation"] as? [String: Any])
        #expect(separation["related"] as? Int == 3 && separation["unrelated"] as? Int == 3)
        let y = pairs.map { $0["similarity"] as! Double }
        let wins = [0, 2, 4].flatMap { i in [1, 3, 5].map { j in y[i] > y[j] ? 1.0 : y[i] == y[j] ? 0.5 : 0 } }.reduce(0, +)
        #expect(abs((separation["roc_auc"] as? Double ?? -1) - wins / 9) < 1e-12)
        // The first pair's precision recounted here: the library's R, its 20 highest positive pairs,
        // each checked against the boxes of the JSON files by rectangle overlap.
        let ex = try explainer(try TablesModel.graph(weights: weights), rules: "tables")
        func load(_ name: String) throws -> Tensor {
            try Preprocessing.ink.normalize(rgb: try RGBImage.load(path: set + "/" + name).planar)
        }
        let e = try ex.explain(try load("pair_000_a.png"), try load("pair_000_b.png"), patch: 8)
        func boxes(_ name: String) throws -> [(String, [Double])] {
            let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: set + "/" + name))) as! [String: Any]
            return (doc["boxes"] as! [[String: Any]]).map { ($0["label"] as! String, ($0["box"] as! [NSNumber]).map(\.doubleValue)) }
        }
        let (la, lb) = (try boxes("pair_000_a.bigrams.json"), try boxes("pair_000_b.bigrams.json"))
        func labels(_ r: PatchRectangle, _ list: [(String, [Double])]) -> Set<String> {
            Set(list.filter { Double(r.x0) < $0.1[2] && $0.1[0] < Double(r.x1) && Double(r.y0) < $0.1[3] && $0.1[1] < Double(r.y1) }.map(\.0))
        }
        let top = e.relevance.indices.filter { e.relevance[$0] > 0 }.sorted { e.relevance[$0] > e.relevance[$1] }.prefix(20)
        let hits = top.filter { i in
            !labels(e.first.grid.rectangle(i / e.columns), la).isDisjoint(with: labels(e.second.grid.rectangle(i % e.columns), lb))
        }.count
        #expect(abs(Double(hits) / Double(top.count) - bilrp[0]) < 1e-12, "\(hits) of \(top.count) against \(bilrp[0])")
    }
}
