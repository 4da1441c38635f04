import BiLRP
import BiLRPReference
import Testing

/// A small VGG-like network with every layer type the engine handles.
func smallNet(seed: UInt64, bias: Bool) throws -> SequentialModel {
    func conv(_ cin: Int, _ cout: Int, _ k: Int, stride: Int = 1, pad: Int = 1, _ s: UInt64) throws -> Layer {
        .conv2d(try Conv2d(
            weight: random(cout * cin * k * k, seed: seed &+ s, scale: (2 / Float(cin * k * k)).squareRoot()),
            bias: bias ? random(cout, seed: seed &+ s &+ 1000, scale: 0.1) : nil,
            outChannels: cout, inChannels: cin, kernel: (k, k), stride: (stride, stride), padding: (pad, pad)))
    }
    return SequentialModel([
        try conv(3, 8, 3, 1), .relu,
        try conv(8, 10, 3, 2), .relu,
        .maxPool2d(Pool2d(kernel: (2, 2))),
        try conv(10, 12, 3, stride: 2, pad: 0, 3), .relu,
        .avgPool2d(Pool2d(kernel: (2, 2), stride: (1, 1))),
    ])
}

/// Stride-1 layers with 16 or more input channels (Winograd and sparse candidates, all within the
/// patch side's reach): 3x3 and 5x5, a 2 x 2 max-pool above a 3x3 layer and an overlapping
/// 3 x 3 / 2 pool above the 5x5 one. Weights from seed, biases from seed + 10.
func stride1Net(seed: UInt64) throws -> SequentialModel {
    func conv(_ cin: Int, _ cout: Int, _ k: Int, pad: Int, _ s: UInt64) throws -> Layer {
        .conv2d(try Conv2d(
            weight: random(cout * cin * k * k, seed: seed &+ s, scale: (2 / Float(cin * k * k)).squareRoot()),
            bias: random(cout, seed: seed &+ 10 &+ s, scale: 0.1),
            outChannels: cout, inChannels: cin, kernel: (k, k), padding: (pad, pad)))
    }
    return SequentialModel([
        try conv(3, 16, 3, pad: 1, 1), .relu,
        try conv(16, 20, 3, pad: 1, 2), .relu,
        .maxPool2d(Pool2d(kernel: (2, 2))),
        try conv(20, 24, 5, pad: 2, 3), .relu,
        .maxPool2d(Pool2d(kernel: (3, 3), stride: (2, 2))),
        try conv(24, 16, 3, pad: 1, 4), .relu,
    ])
}

func image(_ shape: Shape3, seed: UInt64) throws -> Tensor {
    try Tensor(shape: [shape.channels, shape.height, shape.width], data: random(shape.count, seed: seed))
}

let bounds = Preprocessing.torchvision.bounds

@Suite("Explanations")
struct ExplainerTests {
    @Test("conservation on bias-free networks: |sum R - y| <= 1e-4 |y|",
          arguments: ["*:zero", "0:zb;*:gamma=0.25", "first:zb;2-:gamma=0.5;*:zero", "paper-vgg"])
    func conservation(spec: String) throws {
        let model = try smallNet(seed: 1, bias: false)
        let ex = try Explainer(model: model, head: .randomProjection(outputs: 7, seed: 3),
                               composite: try .named(spec), bounds: bounds)
        let x = try image(Shape3(3, 35, 33), seed: 11), x2 = try image(Shape3(3, 35, 33), seed: 12)
        let pair = try ex.explain(x, x2, patch: 4)
        let c = pair.conservation
        #expect(c.relativeError <= 1e-4, "sum R = \(c.relevanceSum), y = \(c.similarity)")
        #expect(c.maxMapErrorFirst <= 1e-4 && c.maxMapErrorSecond <= 1e-4)
        // The marginals are the first-order explanations: they sum to y too.
        #expect(abs(Double(pair.firstMarginal.reduce(0, +)) - c.similarity) <= 1e-4 * abs(c.similarity))
    }

    @Test("the C path equals the pure-Swift reference on a whole explanation", arguments: ["paper-vgg", "hp", "epsilon-plus-flat", "0:zb;conv:alphabeta=2,1"])
    func referenceAgreement(spec: String) throws {
        let model = try smallNet(seed: 2, bias: true)
        let x = try image(Shape3(3, 21, 19), seed: 21), x2 = try image(Shape3(3, 21, 19), seed: 22)
        let composite = try Composite.named(spec)
        let fast = try Explainer(model: model, head: .randomProjection(outputs: 5, seed: 1), composite: composite,
                                 bounds: bounds, blockSize: 2)
        let slow = try Explainer(model: model, head: .randomProjection(outputs: 5, seed: 1), composite: composite,
                                 bounds: bounds, kernels: ReferenceKernels())
        let a = try fast.explain(x, x2, patch: 3), b = try slow.explain(x, x2, patch: 3)
        expectClose(a.relevance, b.relevance, tol: 1e-4, "R (\(spec))")
        #expect(abs(a.similarity - b.similarity) <= 1e-5 * abs(b.similarity))
    }

    /// Large buffers come back from the scratch cache holding the previous explanation's values:
    /// no kernel may count on fresh (zeroed) memory.
    @Test("explanations do not depend on what recycled scratch buffers hold; the cache stays in its limit")
    func recycledScratch() throws {
        let model = try stride1Net(seed: 80)
        let ex = try Explainer(model: model, head: .randomProjection(outputs: 12, seed: 3), composite: .preset("paper-vgg"),
                               bounds: bounds, blockSize: 5)
        let x = try image(Shape3(3, 64, 64), seed: 81), y = try image(Shape3(3, 64, 64), seed: 82)
        let other = try image(Shape3(3, 64, 64), seed: 83)
        let first = try ex.explain(x, y, patch: 4)
        // (Other tests run alongside and take from the same cache: only the bound is certain.)
        #expect(ScratchCache.bytes <= ScratchCache.limit)
        _ = try ex.explain(other, x, patch: 4)  // fills the cached buffers with other values
        let again = try ex.explain(x, y, patch: 4)
        #expect(first.relevance == again.relevance)
        #expect(first.similarity == again.similarity)
        ScratchCache.purge()
        let fresh = try ex.explain(x, y, patch: 4)
        #expect(first.relevance == fresh.relevance)
    }

    /// `stride1Net`: every stride-1 layer a Winograd and sparse candidate, both pool kinds above them.
    @Test("the sparse backward (always, prepared but never picked, off) equals the reference",
          arguments: ["paper-vgg", "0:zb;conv:alphabeta=2,1"], [2.0, 1e-9, 0])
    func sparseAgreement(spec: String, threshold: Double) throws {
        let model = try stride1Net(seed: 50)
        let x = try image(Shape3(3, 26, 22), seed: 31), x2 = try image(Shape3(3, 26, 22), seed: 32)
        let composite = try Composite.named(spec)
        let head = SimilarityHead.randomProjection(outputs: 6, seed: 2)
        let fast = try Explainer(model: model, head: head, composite: composite, bounds: bounds, blockSize: 4,
                                 kernels: CKernelsBackend(convolution: .winograd, sparseBelowDensity: threshold))
        let slow = try Explainer(model: model, head: head, composite: composite, bounds: bounds,
                                 kernels: ReferenceKernels())
        let a = try fast.explain(x, x2, patch: 2), b = try slow.explain(x, x2, patch: 2)
        expectClose(a.relevance, b.relevance, tol: 1e-4, "R (\(spec), sparse below \(threshold))")
        #expect(abs(a.similarity - b.similarity) <= 1e-5 * abs(b.similarity))
    }

    @Test("top pairs equal the first k of a full sort (ties by index), both signs, both methods, k past the count")
    func topPairs() throws {
        let model = try smallNet(seed: 4, bias: false)
        let ex = try Explainer(model: model, head: .randomProjection(outputs: 6, seed: 2), composite: try .preset("paper-vgg"),
                               bounds: bounds)
        let x = try image(Shape3(3, 35, 33), seed: 41), x2 = try image(Shape3(3, 35, 33), seed: 42)
        let pair = try ex.explain(x, x2, patch: 2)
        let R = pair.relevance
        #expect(R.count > 1000)
        for (positive, k) in [(true, 1), (true, 17), (false, 17), (true, 256), (false, 257), (true, R.count + 5), (false, 0)] {
            let want = R.indices.filter { positive ? R[$0] > 0 : R[$0] < 0 }
                .sorted { a, b in
                    let va = positive ? R[a] : -R[a], vb = positive ? R[b] : -R[b]
                    return va != vb ? va > vb : a < b
                }
                .prefix(k)
            let got = positive ? pair.topPositive(k) : pair.topNegative(k)
            #expect(got.map(\.value) == want.map { R[$0] }, "positive \(positive) k \(k)")
            #expect(got.map(\.first) == want.map { pair.first.grid.rectangle($0 / pair.columns) })
            #expect(got.map(\.second) == want.map { pair.second.grid.rectangle($0 % pair.columns) })
        }
    }

    @Test("cosine similarity scales R by 1 / (|phi| |phi'|) and stays conservative")
    func cosine() throws {
        let model = try smallNet(seed: 3, bias: false)
        let dot = try Explainer(model: model, head: .sumPool, composite: try .preset("hp"))
        let cos = try Explainer(model: model, head: .sumPool, similarity: .cosine, composite: try .preset("hp"))
        let x = try image(Shape3(3, 24, 24), seed: 31), x2 = try image(Shape3(3, 24, 24), seed: 32)
        let d = try dot.explain(x, x2, patch: 6), c = try cos.explain(x, x2, patch: 6)
        let phi = try dot.embedding(x), phi2 = try dot.embedding(x2)
        let norm = (phi.reduce(0) { $0 + $1 * $1 } * phi2.reduce(0) { $0 + $1 * $1 }).squareRoot()
        #expect(abs(c.similarity - d.similarity / norm) <= 1e-5)
        #expect(c.conservation.relativeError <= 1e-4)
        expectClose(c.relevance, d.relevance.map { $0 / norm }, tol: 1e-5, "cosine R")
    }

    @Test("first-order LRP: the maps of A are LRP(phi_m) pooled, and the block size does not matter")
    func firstOrder() throws {
        let model = try smallNet(seed: 4, bias: true)
        let x = try image(Shape3(3, 17, 17), seed: 41)
        let ex1 = try Explainer(model: model, head: .randomProjection(outputs: 6, seed: 9),
                                composite: try .preset("paper-vgg"), bounds: bounds, blockSize: 1)
        let ex6 = try Explainer(model: model, head: .randomProjection(outputs: 6, seed: 9),
                                composite: try .preset("paper-vgg"), bounds: bounds, blockSize: 4)
        let f1 = try ex1.factors(x, patch: 1), f6 = try ex6.factors(x, patch: 1)
        expectClose(f1.a, f6.a, tol: 1e-6, "blocks")
        let phi = try ex1.embedding(x)
        var r = [Float](repeating: 0, count: 6)
        r[2] = phi[2]
        let map = try ex1.relevance(x, outputRelevance: r)
        let plane = 17 * 17
        let summed = (0..<plane).map { i in map.data[i] + map.data[plane + i] + map.data[2 * plane + i] }
        expectClose((0..<plane).map { f1.a[$0 * 6 + 2] }, summed, tol: 1e-6, "map 2")
    }

    @Test("batch norm is folded into the convolution before it")
    func batchNormFolding() throws {
        let conv = try Conv2d(weight: random(4 * 3 * 9, seed: 1), bias: random(4, seed: 2), outChannels: 4,
                              inChannels: 3, kernel: (3, 3), padding: (1, 1))
        let bn = try BatchNorm2d(weight: random(4, seed: 3), bias: random(4, seed: 4),
                                 runningMean: random(4, seed: 5), runningVar: random(4, seed: 6).map { abs($0) + 0.1 })
        let model = SequentialModel([.conv2d(conv), .batchNorm2d(bn), .relu])
        let folded = try model.canonized()
        #expect(folded.map(\.index) == [0, 2])
        guard case let .conv2d(f) = folded[0].layer else { Issue.record("not a conv"); return }
        // Compare against conv then batch norm computed directly at one output position.
        let x = random(3 * 5 * 5, seed: 7)
        let g = ConvGeometry(inChannels: 3, height: 5, width: 5, outChannels: 4, kernelH: 3, kernelW: 3, padH: 1, padW: 1)
        var y = [Float](repeating: 0, count: g.outCount), yf = y
        y.withUnsafeMutableBufferPointer { ReferenceKernels().convForward(x, g, weight: conv.weight, bias: conv.bias, $0.baseAddress!) }
        yf.withUnsafeMutableBufferPointer { ReferenceKernels().convForward(x, g, weight: f.weight, bias: f.bias, $0.baseAddress!) }
        for k in 0..<4 {
            for i in 0..<25 {
                let expect = (y[k * 25 + i] - bn.runningMean[k]) / (bn.runningVar[k] + bn.eps).squareRoot() * bn.weight[k] + bn.bias[k]
                #expect(abs(yf[k * 25 + i] - expect) <= 1e-5 * max(1, abs(expect)))
            }
        }
    }
}

@Suite("Errors name the problem")
struct ErrorTests {
    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "" } catch { return "\(error)" }
    }

    @Test func wrongInputShape() throws {
        let ex = try Explainer(model: try smallNet(seed: 1, bias: true), composite: try .preset("hp"))
        let m1 = message { _ = try ex.embedding(Tensor(zeros: [4, 20, 20])) }
        #expect(m1 == "shape mismatch for input channels: expected 3, found 4")
        let m2 = message { _ = try ex.embedding(Tensor(zeros: [3, 20])) }
        #expect(m2.contains("expected 3 dimensions (C, H, W)"))
        let m3 = message { _ = try ex.embedding(Tensor(zeros: [3, 4, 4])) }
        #expect(m3.contains("layer 5") && m3.contains("input height"), "\(m3)")
        // Too small for a pooling window: the pool's own index and kind.
        let m4 = message { _ = try ex.embedding(Tensor(zeros: [3, 1, 1])) }
        #expect(m4.contains("layer 4 (MaxPool2d") && m4.contains("input height"), "\(m4)")
        let m5 = message { _ = try ex.embedding(Tensor(zeros: [3, 6, 6])) }
        #expect(m5.contains("layer 7 (AvgPool2d") && m5.contains("input height"), "\(m5)")
    }

    @Test func layerIndexOutOfRange() {
        let m = message { _ = try VGG.vgg16.features(layers: 32, seed: 1) }
        #expect(m == "layer index 32 is out of range: the model has layers 0..<31, so L must be in 1...31")
        let m0 = message { _ = try SequentialModel([.relu]).truncated(to: 0) }
        #expect(m0.contains("layer index 0 is out of range"))
    }

    @Test("malformed composite strings", arguments: [
        ("0:zb;1-10:gama=0.5", "unknown rule 'gama=0.5'"),
        ("0-:gamma", "rule 'gamma' needs a number after '='"),
        (":zero", "entry ':zero' is not SELECTOR:RULE"),
        ("5-2:zero", "range '5-2' in '5-2:zero' is empty"),
        ("0:alphabeta=2,2", "alpha - beta must be 1"),
        ("zb", "unknown rule preset 'zb'"),
        ("1 zero", "unknown rule preset '1 zero'"),
        ("0:zb;junk", "entry 'junk' is not SELECTOR:RULE"),
    ])
    func badComposite(spec: String, expected: String) {
        let m = message { _ = try Composite.named(spec) }
        #expect(m.contains(expected), "\(m)")
    }

    @Test("a node-name pattern that matches no node is an error naming the pattern")
    func unmatchedPattern() throws {
        let m = message { _ = try Explainer(model: try smallNet(seed: 1, bias: true), composite: try .named("layer4.*:zero")) }
        #expect(m.contains("selector 'layer4.*' matches no node of the model (nodes: 0, 1, 2, 3, ..."), "\(m)")
        // A pattern that matches: the chain's nodes are named by their indices.
        let ex = try Explainer(model: try smallNet(seed: 1, bias: true), composite: try .named("?:gamma=0.25;*:zero"))
        #expect(ex.rules[0] == .gamma(0.25))
    }

    @Test func zBoxNeedsBounds() throws {
        let m = message { _ = try Explainer(model: try smallNet(seed: 1, bias: true), composite: try .preset("paper-vgg")) }
        #expect(m.contains("rule zb at layer 0 needs input bounds"))
    }

    @Test func missingAndMisshapedWeights() throws {
        struct Source: TensorSource {
            var tensors: [String: Tensor]
            func tensor(named name: String) throws -> Tensor? { tensors[name] }
        }
        var t: [String: Tensor] = ["features.0.weight": Tensor(zeros: [64, 3, 3, 3]),
                                   "features.0.bias": Tensor(zeros: [64])]
        let m1 = message { _ = try VGG.vgg16.features(layers: 3, weights: Source(tensors: t)) }
        #expect(m1 == "missing tensor 'features.2.weight' in the weights")
        t["features.0.weight"] = Tensor(zeros: [64, 3, 5, 5])
        let m2 = message { _ = try VGG.vgg16.features(layers: 2, weights: Source(tensors: t)) }
        #expect(m2 == "shape mismatch for tensor 'features.0.weight': expected [64, 3, 3, 3], found [64, 3, 5, 5]")
    }

    @Test func projectionOrientation() throws {
        let d = 12
        let (a, noteA) = try SimilarityHead.orientProjection(try Tensor(shape: [5, d], data: random(5 * d, seed: 1)), featureCount: d)
        #expect(a.shape == [5, d] && noteA.contains("(h, D)"))
        let raw = random(d * 5, seed: 2)
        let (b, noteB) = try SimilarityHead.orientProjection(try Tensor(shape: [d, 5], data: raw), featureCount: d)
        #expect(b.shape == [5, d] && noteB.contains("transposed"))
        #expect(b.data[1 * d + 3] == raw[3 * 5 + 1])
        let m = message { _ = try SimilarityHead.orientProjection(Tensor(zeros: [5, 7]), featureCount: d) }
        #expect(m.contains("expected (h, 12) or (12, h)"))
    }
}
