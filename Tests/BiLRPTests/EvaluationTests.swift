import BiLRP
import BiLRPIO
import Foundation
import Testing

/// phi(x) = ReLU(W vec x), bias-free, as one convolution whose kernel covers the whole input; the
/// head is the identity, y = <phi, phi'>. Exact pair contributions are computed by hand below.
struct LinearReLUToy {
    let side = 8, channels = 1, outputs = 6, patch = 2
    let weight: [Float]
    let model: SequentialModel

    init(positive: Bool, seed: UInt64) throws {
        var g = SplitMix64(seed: seed)
        let n = outputs * channels * side * side
        weight = (0..<n).map { _ in
            let u = Float(g.next() >> 40) / Float(1 << 24)
            return positive ? u : 2 * u - 1
        }
        model = SequentialModel([
            .conv2d(try Conv2d(weight: weight, bias: nil, outChannels: outputs, inChannels: channels,
                               kernel: (side, side), padding: (0, 0))),
            .relu,
        ])
    }

    func explainer(_ rules: String) throws -> Explainer {
        try Explainer(model: model, head: .identity, composite: try .named(rules), bounds: bounds)
    }

    var grid: PatchGrid { PatchGrid(height: side, width: side, patch: patch) }

    /// R[p, q] = sum_m [z_m > 0][z'_m > 0] (sum_{i in p} W_mi x_i)(sum_{j in q} W_mj x'_j): the
    /// Hessian x product of y, and its exact decomposition when every unit stays active.
    func exactContributions(_ x: Tensor, _ xp: Tensor) -> [Float] {
        let g = grid, D = side * side
        func parts(_ t: Tensor) -> (z: [Double], perPatch: [[Double]]) {
            var z = [Double](repeating: 0, count: outputs)
            var pp = [[Double]](repeating: [Double](repeating: 0, count: g.count), count: outputs)
            for m in 0..<outputs {
                for i in 0..<D {
                    let v = Double(weight[m * D + i]) * Double(t.data[i])
                    z[m] += v
                    pp[m][(i / side / patch) * g.columns + (i % side) / patch] += v
                }
            }
            return (z, pp)
        }
        let (z, a) = parts(x), (zp, b) = parts(xp)
        var R = [Float](repeating: 0, count: g.count * g.count)
        for p in 0..<g.count {
            for q in 0..<g.count {
                var s = 0.0
                for m in 0..<outputs where z[m] > 0 && zp[m] > 0 { s += a[m][p] * b[m][q] }
                R[p * g.count + q] = Float(s)
            }
        }
        return R
    }

    /// An input in [0, 1) with a few patches ten times brighter (relevance concentrated there).
    func input(seed: UInt64, bright: [Int]) throws -> Tensor {
        var g = SplitMix64(seed: seed)
        var d = (0..<(side * side)).map { _ in Float(g.next() >> 40) / Float(1 << 24) }
        for p in bright {
            let r = grid.rectangle(p)
            for y in r.y0..<r.y1 { for x in r.x0..<r.x1 { d[y * side + x] *= 10 } }
        }
        return try Tensor(shape: [channels, side, side], data: d)
    }
}

func maxRelativeDifference(_ a: [Float], _ b: [Float]) -> Double {
    let scale = Double(b.map { abs($0) }.max() ?? 1)
    return zip(a, b).map { Double(abs($0 - $1)) }.max()! / max(scale, 1e-30)
}

@Suite("Faithfulness evaluation")
struct EvaluationTests {
    @Test("BiLRP-0 (the hp preset) equals the Hessian x product computed by hand, with mixed-sign weights")
    func hpByHand() throws {
        let toy = try LinearReLUToy(positive: false, seed: 5)
        let ex = try toy.explainer("hp")
        let x = try toy.input(seed: 1, bright: []), xp = try toy.input(seed: 2, bright: [])
        let e = try ex.explain(x, xp, patch: toy.patch)
        let exact = toy.exactContributions(x, xp)
        #expect(exact.contains { $0 < 0 } && exact.contains { $0 > 0 })
        #expect(maxRelativeDifference(e.relevance, exact) <= 1e-5)
    }

    @Test("pair flipping on a bilinear toy: every step's y is the sum of the pairs still present; the exact ordering is steeper than random")
    func flippingIsExact() throws {
        let toy = try LinearReLUToy(positive: true, seed: 7)
        let ex = try toy.explainer("hp")
        let x = try toy.input(seed: 3, bright: [2, 9]), xp = try toy.input(seed: 4, bright: [5, 14])
        let exact = toy.exactContributions(x, xp)
        let g = toy.grid, P = g.count
        let zero = PerturbationBaseline.zero
        let sides = (PairFlipping.Side(input: x, fill: try zero.fill(for: x, patch: 2), grid: g),
                     PairFlipping.Side(input: xp, fill: try zero.fill(for: xp, patch: 2), grid: g))
        let flipping = try PairFlipping(steps: 10, baseline: .zero)
        let ranking = try PairRanking(name: "exact", rows: P, columns: P, scores: exact)
        let embed: (Tensor) throws -> [Float] = { try ex.embedding($0) }
        for order in [ranking.order(), ranking.order().reversed()] {
            let curve = try flipping.curve(order: order, first: sides.0, second: sides.1, similarity: .dot, embed: embed)
            let sequence = RemovalSequence(order: order, rows: P, columns: P)
            #expect(sequence.events.count == 2 * P)
            for k in 0...10 {
                let (a, b) = sequence.removed(first: sequence.count(step: k, of: 10))
                var remaining = 0.0
                for p in 0..<P where !a[p] { for q in 0..<P where !b[q] { remaining += Double(exact[p * P + q]) } }
                #expect(abs(curve.similarity[k] - remaining) <= 1e-5 * curve.similarity[0], "step \(k)")
            }
            #expect(curve.fractions.first == 0 && curve.fractions.last == 1 && curve.similarity.last == 0)
        }
        let most = try flipping.curve(order: ranking.order(), first: sides.0, second: sides.1, similarity: .dot, embed: embed)
        let least = try flipping.curve(order: ranking.order().reversed(), first: sides.0, second: sides.1, similarity: .dot, embed: embed)
        for seed in 0..<20 {
            let r = PairRanking.random(rows: P, columns: P, seed: UInt64(seed)).order()
            let m = try flipping.curve(order: r, first: sides.0, second: sides.1, similarity: .dot, embed: embed)
            let l = try flipping.curve(order: r.reversed(), first: sides.0, second: sides.1, similarity: .dot, embed: embed)
            #expect(most.auc < m.auc && least.auc > l.auc, "seed \(seed): exact \(most.auc) / \(least.auc), random \(m.auc) / \(l.auc)")
        }
    }

    @Test("random orderings: the mean curve is the expected share of pairs left, (P - |S|)(Q - |S'|) / PQ of y")
    func randomMean() throws {
        let toy = try LinearReLUToy(positive: true, seed: 9)
        let ex = try toy.explainer("hp")
        let x = try toy.input(seed: 5, bright: [0]), xp = try toy.input(seed: 6, bright: [15])
        let g = toy.grid, P = g.count
        let zero = PerturbationBaseline.zero
        let sides = (PairFlipping.Side(input: x, fill: try zero.fill(for: x, patch: 2), grid: g),
                     PairFlipping.Side(input: xp, fill: try zero.fill(for: xp, patch: 2), grid: g))
        let flipping = try PairFlipping(steps: 8, baseline: .zero)
        let seeds = 400
        var diffs = [[Double]](repeating: [], count: 9)
        for seed in 0..<seeds {
            let order = PairRanking.random(rows: P, columns: P, seed: UInt64(seed)).order()
            let c = try flipping.curve(order: order, first: sides.0, second: sides.1, similarity: .dot, embed: { try ex.embedding($0) })
            let sequence = RemovalSequence(order: order, rows: P, columns: P)
            for k in 0...8 {
                let (a, b) = sequence.removed(first: sequence.count(step: k, of: 8))
                let left = Double(a.filter { !$0 }.count * b.filter { !$0 }.count) / Double(P * P)
                diffs[k].append(c.normalized[k] - left)
            }
        }
        for k in 0...8 {
            let mean = diffs[k].reduce(0, +) / Double(seeds)
            let sd = (diffs[k].map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(seeds - 1)).squareRoot()
            #expect(abs(mean) <= 4 * sd / Double(seeds).squareRoot() + 1e-9, "step \(k): mean difference \(mean), sd \(sd)")
        }
    }

    @Test("summary statistics: mean and population deviation, median and quartiles by interpolated rank")
    func statistics() {
        let s = EvaluationReport.Statistic([4, 1, 100, 3, 2])
        #expect(s.pairs == 5 && s.mean == 22 && s.median == 3 && s.q1 == 2 && s.q3 == 4)
        let squares: [Double] = [4, 1, 100, 3, 2].map { (v: Double) -> Double in (v - 22) * (v - 22) }
        let variance: Double = squares.reduce(0, +) / 5
        #expect(abs(s.std - variance.squareRoot()) < 1e-12)
        let even = EvaluationReport.Statistic([1, 2, 3, 4])
        #expect(even.median == 2.5 && even.q1 == 1.75 && even.q3 == 3.25)
        #expect(EvaluationReport.Statistic([]).median.isNaN && EvaluationReport.Statistic([7]).q3 == 7)
    }

    @Test("baselines: zero, the channel means, and a blur that keeps a constant image and each channel's sum")
    func baselines() throws {
        var g = SplitMix64(seed: 3)
        let x = try Tensor(shape: [2, 9, 7], data: (0..<126).map { _ in Float(g.next() >> 40) / Float(1 << 24) })
        let mean = try PerturbationBaseline.mean.fill(for: x, patch: 2)
        for c in 0..<2 {
            let m = x.data[(c * 63)..<((c + 1) * 63)].reduce(0, +) / 63
            #expect(mean.data[(c * 63)..<((c + 1) * 63)].allSatisfy { abs($0 - m) < 1e-6 })
        }
        #expect(try PerturbationBaseline.zero.fill(for: x, patch: 2).data.allSatisfy { $0 == 0 })
        let constant = try Tensor(shape: [1, 6, 5], data: [Float](repeating: 0.3, count: 30))
        #expect(try PerturbationBaseline.blur.fill(for: constant, patch: 2).data.allSatisfy { abs($0 - 0.3) < 1e-6 })
        let blurred = try PerturbationBaseline.blur.fill(for: x, patch: 1)
        #expect(blurred.data != x.data)
        let spread = { (d: ArraySlice<Float>) in d.max()! - d.min()! }
        #expect(spread(blurred.data[0..<63]) < spread(x.data[0..<63]))
    }

    func photo(width: Int, height: Int, seed: UInt64) throws -> RGBImage {
        var g = SplitMix64(seed: seed)
        return try RGBImage(width: width, height: height, pixels: (0..<(width * height * 3)).map { _ in Float(g.next() >> 40) / Float(1 << 24) })
    }

    @Test("shift and hflip: every known pixel's target holds exactly its colour; the unknown ones are those that left the image")
    func exactTransforms() throws {
        let img = try photo(width: 20, height: 16, seed: 1)
        for (t, known) in [(SyntheticTransform.shift(dx: 5, dy: -3), 15 * 13), (.shift(dx: -20, dy: 0), 0), (.hflip, 20 * 16)] {
            let (out, c) = try t.apply(img)
            var count = 0
            for y in 0..<16 {
                for x in 0..<20 {
                    let tx = c.targets[2 * (y * 20 + x)], ty = c.targets[2 * (y * 20 + x) + 1]
                    guard tx.isFinite else { continue }
                    count += 1
                    let (u, v) = (Int(tx - 0.5), Int(ty - 0.5))
                    #expect(Float(u) + 0.5 == tx && Float(v) + 0.5 == ty)
                    for ch in 0..<3 { #expect(out[u, v, ch] == img[x, y, ch], "\(t) (\(x), \(y))") }
                }
            }
            #expect(count == known, "\(t)")
        }
        // The manual computation: shift 5, -3 sends pixel (2, 7) to (7, 4) and pushes row 0 out.
        let (_, c) = try SyntheticTransform.shift(dx: 5, dy: -3).apply(img)
        #expect(c.targets[2 * (7 * 20 + 2)] == 7.5 && c.targets[2 * (7 * 20 + 2) + 1] == 4.5)
        #expect(c.targets[2 * (1 * 20 + 2)].isNaN && c.targets[2 * (7 * 20 + 17)].isNaN)
    }

    @Test("scale and crop: targets by the stated maps, and the colour there matches the source")
    func resamplingTransforms() throws {
        // A smooth image, so bilinear resampling reproduces it closely.
        var pixels = [Float]()
        for y in 0..<32 { for x in 0..<32 { pixels += [Float(x) / 31, Float(y) / 31, 0.5] } }
        let img = try RGBImage(width: 32, height: 32, pixels: pixels)
        let (scaled, cs) = try SyntheticTransform.scale(2).apply(img)
        // (x + 0.5, y + 0.5) -> 16 + 2 (x + 0.5 - 16): pixel (10, 12) -> (5, 9); (3, 3) leaves the image.
        #expect(cs.targets[2 * (12 * 32 + 10)] == 5 && cs.targets[2 * (12 * 32 + 10) + 1] == 9)
        #expect(cs.targets[2 * (3 * 32 + 3)].isNaN)
        let (cropped, cc) = try SyntheticTransform.crop(x: 8, y: 4, width: 16, height: 16).apply(img)
        // (x + 0.5 - 8) * 2, (y + 0.5 - 4) * 2: pixel (10, 6) -> (5, 5); (7, 6) is outside the crop.
        #expect(cc.targets[2 * (6 * 32 + 10)] == 5 && cc.targets[2 * (6 * 32 + 10) + 1] == 5)
        #expect(cc.targets[2 * (6 * 32 + 7)].isNaN)
        for (out, c) in [(scaled, cs), (cropped, cc)] {
            var worst: Float = 0
            for y in 0..<32 {
                for x in 0..<32 {
                    let tx = c.targets[2 * (y * 32 + x)], ty = c.targets[2 * (y * 32 + x) + 1]
                    guard tx.isFinite, tx >= 1, ty >= 1, tx < 31, ty < 31 else { continue }
                    // The output pixel whose centre is nearest the target; the ramp moves 1/31 per source pixel.
                    let u = Int(tx), v = Int(ty)
                    worst = max(worst, abs(out[u, v, 0] - img[x, y, 0]), abs(out[u, v, 1] - img[x, y, 1]))
                }
            }
            #expect(worst <= 1.0 / 31, "largest colour difference at the targets: \(worst)")
        }
    }

    @Test("an explanation that is the true correspondence scores precision 1 and best-match accuracy 1; random scores about chance")
    func perfectCorrespondence() throws {
        let img = try photo(width: 32, height: 32, seed: 2)
        let (_, c) = try SyntheticTransform.shift(dx: 8, dy: 0).apply(img)
        let g = PatchGrid(height: 32, width: 32, patch: 8)
        let truth = try PatchTruth(c, first: g, second: g, tolerance: 0)
        // Patch (r, c) goes to (r, c + 1); the last column leaves the image.
        #expect(truth.knownFirstPatches == 12)
        var scores = [Float](repeating: 0, count: 256)
        for p in 0..<16 where p % 4 != 3 { scores[p * 16 + p + 1] = 1 }
        let s = try truth.scores(try PairRanking(name: "truth", rows: 16, columns: 16, scores: scores), k: 10, fraction: 1)
        #expect(s.precisionAtK == 1 && s.counted == 10 && s.bestMatchAccuracy == 1 && s.firstPatches == 12)
        #expect(s.chance == 1.0 / 16)
        // One wrong pair among the top: precision 9/10.
        scores[0 * 16 + 5] = 2
        let wrong = try truth.scores(try PairRanking(name: "one wrong", rows: 16, columns: 16, scores: scores), k: 10, fraction: 1)
        #expect(wrong.precisionAtK == 0.9 && wrong.bestMatchAccuracy == 11.0 / 12)
        var mean = 0.0
        for seed in 0..<200 {
            mean += try truth.scores(PairRanking.random(rows: 16, columns: 16, seed: UInt64(seed)), k: 10, fraction: 1).precisionAtK / 200
        }
        #expect(abs(mean - 1.0 / 16) < 0.02, "random precision \(mean)")
    }

    @Test("bad input: unknown or malformed transforms, a correspondence of the wrong size, an empty pair list")
    func badInput() throws {
        #expect(throws: BiLRPError.invalidArgument("unknown transform 'rotate:5' (expected shift:DX,DY, scale:S, crop:X,Y,W,H or hflip)")) {
            try SyntheticTransform(parsing: "rotate:5")
        }
        #expect(throws: BiLRPError.invalidArgument("transform 'shift:1': shift takes 2 integers (expected shift:DX,DY, scale:S, crop:X,Y,W,H or hflip)")) {
            try SyntheticTransform(parsing: "shift:1")
        }
        #expect(throws: BiLRPError.self) { try SyntheticTransform(parsing: "scale:9") }
        #expect(throws: BiLRPError.self) { try SyntheticTransform.crop(x: 20, y: 0, width: 16, height: 16).apply(try photo(width: 32, height: 32, seed: 1)) }
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let offsets = dir.appendingPathComponent("offsets.npy").path
        try NPY.write(try Tensor(shape: [16, 32, 2], data: [Float](repeating: 0, count: 1024)), to: offsets)
        #expect(throws: BiLRPError.shapeMismatch(what: "correspondence '\(offsets)'",
                                                 expected: "(32, 32, 2), the first input's size as the model sees it", found: "[16, 32, 2]")) {
            try Correspondence.read(path: offsets, width: 32, height: 32)
        }
        let csv = dir.appendingPathComponent("pairs.csv").path
        try Data("first,second\n# nothing yet\n".utf8).write(to: URL(fileURLWithPath: csv))
        #expect(throws: BiLRPError.invalidArgument("the pair list '\(csv)' holds no pairs (only its header)")) {
            try EvaluationPair.list(csv: csv)
        }
        try Data("first,second,angle\na.png,b.png,3\n".utf8).write(to: URL(fileURLWithPath: csv))
        #expect(throws: BiLRPError.self) { try EvaluationPair.list(csv: csv) }
    }

    @Test("a CSV pair list: columns by header, paths relative to the CSV, a transform per row, quoted fields")
    func pairList() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let csv = dir.appendingPathComponent("pairs.csv").path
        try Data("name,first,second,transform\nstereo,l.png,r.png,\n,a.png,,hflip\n\"x, y\",/b.png,, \"shift:16,8\"\n".utf8).write(to: URL(fileURLWithPath: csv))
        let pairs = try EvaluationPair.list(csv: csv)
        #expect(pairs.count == 3)
        #expect(pairs[2].name == "x, y" && pairs[2].first == "/b.png" && pairs[2].transform == .shift(dx: 16, dy: 8))
        #expect(pairs[0].name == "stereo" && pairs[0].first == dir.appendingPathComponent("l.png").path && pairs[0].second == dir.appendingPathComponent("r.png").path)
        #expect(pairs[1].name == "a vs hflip" && pairs[1].transform == .hflip && pairs[1].second == nil)
    }

    @Test("bilrp eval: JSON with every ordering's curves and scores, a PNG plot, the table; y agrees with explain")
    func command() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = dir.appendingPathComponent("eval.json").path, plot = dir.appendingPathComponent("eval.png").path
        let a = fixturePath("images/baseline.jpg"), b = fixturePath("images/progressive.jpg")
        let r = try runBilrp(["eval", a, "--transform", "shift:4,0", "--transform", "hflip", "--steps", "4", "--seeds", "2",
                              "--json", json, "--plot", plot] + smallArgs)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("bilrp:paper-vgg") && r.stdout.contains("precision@20"))
        struct Doc: Decodable {
            struct Layer: Decodable { var layer: String; var pairs: [EvaluationReport.Pair]; var summary: [EvaluationReport.Summary] }
            var layers: [Layer]
        }
        let doc = try JSONDecoder().decode(Doc.self, from: try Data(contentsOf: URL(fileURLWithPath: json)))
        #expect(doc.layers.count == 1 && doc.layers[0].pairs.count == 2)
        let pair = doc.layers[0].pairs[0]
        #expect(pair.orderings.map(\.name) == ["bilrp:paper-vgg", "marginals:paper-vgg", "hp", "random"])
        for o in pair.orderings {
            #expect(o.mostRelevantFirst?.fractions == [0, 0.25, 0.5, 0.75, 1] && o.mostRelevantFirst?.similarity[0] == pair.similarity)
            #expect(o.correspondence != nil)
        }
        #expect(pair.orderings[3].seedAUCs?.count == 2)
        // y as `bilrp explain` computes it for the same transformed pair (the library's transform).
        let loaded = try LoadedExplainer.load({ () -> ExplanationSettings in
            var s = ExplanationSettings()
            s.weights = fixturePath("vgg16_l10.safetensors"); s.layer = .index(10); s.size = 32; s.patch = 4
            s.head = "random:8:3"; s.preprocess = "torchvision"
            return s
        }())
        let x = try loaded.input(a)
        let (img, _) = try SyntheticTransform.shift(dx: 4, dy: 0).apply(x.display)
        let e = try loaded.explainer.explain(x.tensor, try loaded.preprocessing.normalize(rgb: img.planar), patch: 4)
        #expect(abs(pair.similarity - Double(e.similarity)) <= 1e-5 * abs(Double(e.similarity)))
        #expect(try Data(contentsOf: URL(fileURLWithPath: plot)).prefix(4) == Data([0x89, 0x50, 0x4E, 0x47]))
        // Bad input: nothing written, one line, exit 1.
        let empty = dir.appendingPathComponent("empty.csv").path
        try Data("first,second\n".utf8).write(to: URL(fileURLWithPath: empty))
        let out = dir.appendingPathComponent("bad.json").path
        for (args, message) in [
            (["--pairs", empty], "bilrp: error: the pair list '\(empty)' holds no pairs (only its header)\n"),
            ([a, "--transform", "spin:3"], "bilrp: error: unknown transform 'spin:3' (expected shift:DX,DY, scale:S, crop:X,Y,W,H or hflip)\n"),
            ([a, b, "--correspondence", fixturePath("images/baseline.jpg") + ".npy"], "bilrp: error: no such file: '\(fixturePath("images/baseline.jpg")).npy'\n"),
        ] {
            let bad = try runBilrp(["eval"] + args + ["--json", out] + smallArgs)
            #expect(bad.status == 1 && bad.stderr == message, "\(bad.stderr)")
            #expect(!FileManager.default.fileExists(atPath: out))
        }
    }

    @Test("labels: patches overlapping boxes of one label match; precision at k ranks every first patch; chance counts every pair")
    func labelTruth() throws {
        // 32 x 32 inputs, 8-pixel patches: 4 x 4 grids.
        let g = PatchGrid(height: 32, width: 32, patch: 8)
        // First: "45" over patches 0 and 1 (x 2..14 spans columns 0 and 1 of row 0); "12" on patch 15.
        let a = try PatchLabels(boxes: [.init(label: "45", x0: 2, y0: 1, x1: 14, y1: 7), .init(label: "12", x0: 24, y0: 24, x1: 32, y1: 32)],
                                width: 32, height: 32)
        // Second: "45" on patch 10 only (x in [16, 24), y in [16, 24)); "12" on patch 0; "99" on patch 5.
        let b = try PatchLabels(boxes: [.init(label: "45", x0: 16, y0: 16, x1: 24, y1: 24), .init(label: "12", x0: 0, y0: 0, x1: 8, y1: 8),
                                        .init(label: "99", x0: 8, y0: 8, x1: 16, y1: 16)],
                                width: 32, height: 32)
        let truth = PatchTruth(labels: a, b, first: g, second: g)
        let matches = (0..<16).flatMap { p in (0..<16).filter { truth.isMatch(p, $0) }.map { [p, $0] } }
        #expect(matches == [[0, 10], [1, 10], [15, 0]])
        #expect(truth.knownFirstPatches == 3)
        // Top pairs: (0, 10) right, (4, 10) wrong (patch 4 holds nothing), (1, 10) right; one negative pair.
        var scores = [Float](repeating: 0, count: 256)
        scores[0 * 16 + 10] = 3; scores[4 * 16 + 10] = 2; scores[1 * 16 + 10] = 1; scores[15 * 16 + 0] = -1
        let s = try truth.scores(try PairRanking(name: "r", rows: 16, columns: 16, scores: scores), k: 20, fraction: 1)
        #expect(s.counted == 3 && abs(s.precisionAtK - 2.0 / 3) < 1e-12, "a top pair on an unlabelled patch is a miss")
        // Best match of the labelled first patches: 0 -> 10 right, 1 -> 10 right, 15 -> 0 (all its scores are 0 but
        // the negative one: the first maximum, q = 1) wrong.
        #expect(s.firstPatches == 3 && abs(s.bestMatchAccuracy - 2.0 / 3) < 1e-12)
        #expect(abs(s.chance - 3.0 / 256) < 1e-12, "3 matching pairs of 256")
        // Boxes the model cannot see, and empty ones, are errors naming them.
        #expect(throws: BiLRPError.invalidArgument("labels: box 1 ('7') at [40.0, 0.0, 50.0, 5.0] lies outside the 32 x 32 input (boxes are in the pixels the model sees)")) {
            try PatchLabels(boxes: [.init(label: "7", x0: 40, y0: 0, x1: 50, y1: 5)], width: 32, height: 32)
        }
        #expect(throws: BiLRPError.invalidArgument("labels: box 1 ('7') is empty or not finite: [4.0, 0.0, 4.0, 5.0]")) {
            try PatchLabels(boxes: [.init(label: "7", x0: 4, y0: 0, x1: 4, y1: 5)], width: 32, height: 32)
        }
    }

    @Test("separation: the ROC AUC is the Mann-Whitney statistic, ties counting half; nil without both groups")
    func separation() throws {
        // Related 3, 2, 1 against unrelated 0.5, 2: of six comparisons, 4 wins, one tie (2 = 2), one loss.
        let s = try #require(Separation(related: [3, 2, 1], unrelated: [0.5, 2]))
        #expect(s.rocAUC == 4.5 / 6 && s.related == 3 && s.unrelated == 2)
        #expect(Separation(related: [1, 2], unrelated: [3, 4])?.rocAUC == 0)
        #expect(Separation(related: [5], unrelated: [1, 2, 3])?.rocAUC == 1)
        #expect(Separation(related: [1, 2], unrelated: []) == nil)
    }

    @Test("label files and pair lists with labels: each mistake is named")
    func labelFileErrors() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        func write(_ name: String, _ text: String) throws -> String {
            let path = dir.appendingPathComponent(name).path
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            return path
        }
        let good = try write("good.json", #"{"boxes": [{"label": "45", "box": [1, 2, 9, 10]}]}"#)
        #expect(try PatchLabels.read(path: good, width: 16, height: 16).boxes == [.init(label: "45", x0: 1, y0: 2, x1: 9, y1: 10)])
        let three = try write("three.json", #"{"boxes": [{"label": "45", "box": [1, 2, 9]}]}"#)
        #expect(throws: BiLRPError.invalidArgument("labels '\(three)': box 1 ('45') has 3 numbers, expected x0, y0, x1, y1")) {
            try PatchLabels.read(path: three, width: 16, height: 16)
        }
        let misspelt = try write("misspelt.json", #"{"boxes": [{"lable": "45", "box": [1, 2, 9, 10]}]}"#)
        #expect(throws: BiLRPError.invalidArgument("labels '\(misspelt)': unknown field 'boxes[0].lable' (expected one of: label, box)")) {
            try PatchLabels.read(path: misspelt, width: 16, height: 16)
        }
        #expect(throws: BiLRPError.io("no such file: '\(dir.path)/none.json'")) {
            try PatchLabels.read(path: dir.path + "/none.json", width: 16, height: 16)
        }
        let maybe = try write("maybe.csv", "first,second,related\na.png,b.png,maybe\n")
        #expect(throws: BiLRPError.invalidArgument("the pair list '\(maybe)' line 2: related is 'maybe' (expected true or false)")) {
            try EvaluationPair.list(csv: maybe)
        }
        let half = try write("half.csv", "first,second,first_labels\na.png,b.png,a.json\n")
        #expect(throws: BiLRPError.invalidArgument("the pair list '\(half)' line 2: give first_labels and second_labels together")) {
            try EvaluationPair.list(csv: half)
        }
        let both = try write("both.csv", "first,second,correspondence,first_labels,second_labels\na.png,b.png,c.csv,a.json,b.json\n")
        #expect(throws: BiLRPError.invalidArgument("the pair list '\(both)' line 2: pair '\(dir.path)/a.png': give one ground truth, a correspondence or labels, not both")) {
            try EvaluationPair.list(csv: both)
        }
        let list = try EvaluationPair.list(csv: try write("ok.csv", "first,second,related,first_labels,second_labels\na.png,b.png,yes,a.json,b.json\nc.png,d.png,false,,\n"))
        #expect(list.map(\.related) == [true, false])
        #expect(list[0].labels == .init(first: dir.path + "/a.json", second: dir.path + "/b.json") && list[1].labels == nil)
    }

    @Test("summaries: precision and best match over the pairs where every ordering has a positive pair; the others counted as unscored")
    func unscoredPairs() throws {
        func pair(_ name: String, _ scores: [(String, Double, Int)]?) -> String {
            let orderings = (scores ?? [("bilrp:tables", 0, 0), ("random", 0, 0)]).map { o in
                let truth = scores == nil ? "" : #", "correspondence": {"precision_at_k": \#(o.1), "k": 20, "counted": \#(o.2), "best_match_accuracy": \#(o.1), "first_patches": 4, "chance": 0.01}"#
                return #"{"name": "\#(o.0)"\#(truth)}"#
            }
            return #"{"name": "\#(name)", "first": "a", "second": "b", "similarity": 1, "conservation": {}, "seconds": 0, "orderings": [\#(orderings.joined(separator: ","))]}"#
        }
        let json = "[" + [pair("scored", [("bilrp:tables", 0.9, 20), ("random", 0.05, 20)]),
                          pair("y = 0", [("bilrp:tables", 0, 0), ("random", 0.1, 20)]),
                          pair("no truth", nil)].joined(separator: ",") + "]"
        let pairs = try JSONDecoder().decode([EvaluationReport.Pair].self, from: Data(json.utf8))
        let summary = Evaluation.summarize(pairs)
        #expect(summary.map(\.name) == ["bilrp:tables", "random"])
        #expect(summary[0].precisionAtK?.pairs == 1 && summary[0].precisionAtK?.mean == 0.9 && summary[0].unscored == 1)
        #expect(summary[1].precisionAtK?.pairs == 1 && summary[1].precisionAtK?.mean == 0.05, "the same pairs for every ordering")
    }
}
