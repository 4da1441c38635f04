import BiLRP
import BiLRPIO
import Foundation
import Testing

/// Fixtures written by scripts/make-fixtures.py: PyTorch (float64) layer-by-layer LRP with
/// autograd, and the Hessian x Product through double backward. Tolerance: 1e-4 of max |R| (and
/// of max |A|), the engine issue's bound.
func fixture(_ name: String) throws -> SafetensorsFile {
    guard let url = Bundle.module.url(forResource: "Fixtures/\(name)", withExtension: "safetensors") else {
        throw BiLRPError.io("fixture \(name) not found")
    }
    return try SafetensorsFile(path: url.path)
}

extension SafetensorsFile {
    func t(_ name: String) throws -> Tensor {
        guard let t = try tensor(named: name) else { throw BiLRPError.missingTensor(name) }
        return t
    }
}

/// The fixture script's small net, weights under `layers.N`.
func fixtureSmallNet(_ f: SafetensorsFile) throws -> SequentialModel {
    func conv(_ i: Int, stride: Int, pad: Int) throws -> Layer {
        let w = try f.t("layers.\(i).weight"), b = try f.t("layers.\(i).bias")
        return .conv2d(try Conv2d(weight: w.data, bias: b.data, outChannels: w.shape[0], inChannels: w.shape[1],
                                  kernel: (w.shape[2], w.shape[3]), stride: (stride, stride), padding: (pad, pad)))
    }
    return SequentialModel([
        try conv(0, stride: 1, pad: 1), .relu, try conv(2, stride: 2, pad: 1), .relu, .maxPool2d(Pool2d(kernel: (2, 2))),
        try conv(5, stride: 2, pad: 0), .relu, .avgPool2d(Pool2d(kernel: (2, 2), stride: (1, 1))),
    ])
}

func compareWithFixture(_ f: SafetensorsFile, model: SequentialModel, blockSize: Int? = nil,
                        kernels: any Kernels = CKernelsBackend()) throws {
    try compareWithFixture(f, graph: Graph(chain: model), blockSize: blockSize, kernels: kernels)
}

func compareWithFixture(_ f: SafetensorsFile, graph model: Graph, blockSize: Int? = nil,
                        kernels: any Kernels = CKernelsBackend()) throws {
    let composites = try JSONDecoder().decode([String].self, from: Data(f.metadata["composites"]!.utf8))
    let patch = Int(f.metadata["patch"]!)!
    let x1 = try f.t("x1"), x2 = try f.t("x2"), head = try f.t("head")
    for spec in composites {
        let ex = try Explainer(graph: model, head: .projection(head), composite: try .named(spec),
                               bounds: Preprocessing.torchvision.bounds, blockSize: blockSize, kernels: kernels)
        let pair = try ex.explain(x1, x2, patch: patch)
        expectClose(pair.first.a, try f.t("\(spec).A1").data, tol: 1e-4, "A(x) \(spec)")
        expectClose(pair.second.a, try f.t("\(spec).A2").data, tol: 1e-4, "A(x') \(spec)")
        expectClose(pair.relevance, try f.t("\(spec).R").data, tol: 1e-4, "R \(spec)")
        let y = try f.t("\(spec).y").data[0]
        #expect(abs(pair.similarity - y) <= 1e-5 * abs(y), "y \(spec): \(pair.similarity) vs \(y)")
        expectClose(pair.first.embedding, try f.t("\(spec).phi1").data, tol: 1e-5, "phi \(spec)")
    }
    // BiLRP with the hp preset is the Hessian x Product (ReLU network, LRP-0 everywhere).
    let hp = try Explainer(graph: model, head: .projection(head), composite: try .preset("hp"), blockSize: blockSize,
                           kernels: kernels)
    let pair = try hp.explain(x1, x2, patch: patch)
    expectClose(pair.relevance, try f.t("hessian.R").data, tol: 1e-4, "R hp vs true Hessian x Product")
}

@Suite("Agreement with PyTorch")
struct PyTorchFixtureTests {
    @Test("small net: paper-vgg, hp, alpha-beta, z^B + epsilon, w^2 + z+; with biases",
          arguments: [CKernelsBackend.Convolution.winograd, .direct])
    func smallNet(convolution: CKernelsBackend.Convolution) throws {
        let f = try fixture("smallnet")
        try compareWithFixture(f, model: try fixtureSmallNet(f), blockSize: 3, kernels: CKernelsBackend(convolution: convolution))
    }

    @Test("VGG-16 features[:10] loaded by torchvision names: paper-vgg and hp, h = 12",
          arguments: [CKernelsBackend.Convolution.winograd, .direct])
    func vgg16(convolution: CKernelsBackend.Convolution) throws {
        let f = try fixture("vgg16_l10")
        try compareWithFixture(f, model: try VGG.vgg16.features(layers: 10, weights: f),
                               kernels: CKernelsBackend(convolution: convolution))
    }

    /// epsilon-gamma-box is not among the fixture's presets: on this ResNet its relevance at layer4
    /// sums to 240 y (gamma's denominators z + gamma z+ cross zero at the convolutions before a
    /// residual sum, whose outputs may be negative), and no float32 computation meets 1e-4 there:
    /// PyTorch's own float32 run of the script's recipe is off by 2.5e-4 of max |A| (4.2e-4 at
    /// layer1), this engine by 1.2e-3 (2.1e-4 at layer1), while on epsilon-plus-flat both agree to 7e-7.
    /// zennit's ResNetCanonizer and EpsilonPlusFlat are the ResNet setup of the literature; the
    /// fixture script runs zennit itself (its stabilizer set to this preset's 1e-9, and each batch
    /// norm's eps moved into its variance, since zennit's merge leaves x / sqrt(1 + eps) behind).
    @Test("ResNet-18 at layer4 against zennit 0.5.1 (EpsilonPlusFlat + ResNetCanonizer): A, R, y within 1e-4",
          arguments: [CKernelsBackend.Convolution.winograd, .direct])
    func resnet18Zennit(convolution: CKernelsBackend.Convolution) throws {
        let f = try fixture("resnet18_zennit")
        let graph = try ResNet.resnet18.graph(cut: f.metadata["cut"]!, seed: UInt64(f.metadata["seed"]!)!)
        let ex = try Explainer(graph: graph, head: .projection(try f.t("head")), composite: try .preset(f.metadata["composite"]!),
                               blockSize: 3, kernels: CKernelsBackend(convolution: convolution))
        let pair = try ex.explain(try f.t("x1"), try f.t("x2"), patch: Int(f.metadata["patch"]!)!)
        expectClose(pair.first.a, try f.t("A1").data, tol: 1e-4, "A(x) vs zennit")
        expectClose(pair.second.a, try f.t("A2").data, tol: 1e-4, "A(x') vs zennit")
        expectClose(pair.relevance, try f.t("R").data, tol: 1e-4, "R vs zennit")
        let y = try f.t("y").data[0]
        #expect(abs(pair.similarity - y) <= 1e-5 * abs(y), "y: \(pair.similarity) vs \(y)")
    }

    @Test("ResNet-18 (seeded weights, batch norms with nonzero statistics) at layer4, 64 x 64: epsilon-plus-flat and hp",
          arguments: [CKernelsBackend.Convolution.winograd, .direct])
    func resnet18(convolution: CKernelsBackend.Convolution) throws {
        let f = try fixture("resnet18_graph")
        let graph = try ResNet.resnet18.graph(cut: f.metadata["cut"]!, seed: UInt64(f.metadata["seed"]!)!)
        try compareWithFixture(f, graph: graph, blockSize: 3, kernels: CKernelsBackend(convolution: convolution))
    }

    @Test("the Gaussian projection equals the Python twin of its generator")
    func gaussianGenerator() throws {
        let expected = try fixture("misc").t("gaussian_seed7_h4_d6")
        let ours = SimilarityHead.gaussianMatrix(outputs: 4, inputs: 6, seed: 7)
        #expect(expected.shape == [4, 6])
        expectClose(ours, expected.data, tol: 1e-6, "gaussian seed 7")
    }

    @Test("the parallel draw of the projection (rows jump ahead in the stream) equals the sequential one, bit for bit")
    func gaussianRowsJumpAhead() throws {
        let (h, d, seed): (Int, Int, UInt64) = (37, 1001, 12345)
        var rng = SplitMix64(seed: seed)
        let scale = 1 / Double(h).squareRoot()
        let sequential = (0..<(h * d)).map { _ in Float(rng.nextNormal() * scale) }
        #expect(SimilarityHead.gaussianMatrix(outputs: h, inputs: d, seed: seed) == sequential)
        let cancelled = Cancellation()
        cancelled.cancel()
        #expect(throws: BiLRPError.cancelled) {
            try SimilarityHead.gaussianMatrix(outputs: h, inputs: d, seed: seed, cancellation: cancelled)
        }
    }

    @Test("safetensors bf16 and f16 decode to the values PyTorch gives")
    func reducedPrecision() throws {
        let f = try fixture("misc")
        #expect(try f.t("probe_bf16").data == f.t("probe_bf16_as_f32").data)
        #expect(try f.t("probe_f16").data == f.t("probe_f16_as_f32").data)
        #expect(f.entries["probe_bf16"]?.dtype == "BF16" && f.entries["probe_f16"]?.dtype == "F16")
    }
}

