import BiLRP
import BiLRPIO
import Foundation
import Testing

func fixturePath(_ name: String) -> String {
    Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent(name).path
}

/// The fetched assets (scripts/fetch-assets.sh; `make test` fetches them first).
let assetsDirectory: String = {
    var dir = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { dir.deleteLastPathComponent() }
    return ProcessInfo.processInfo.environment["BILRP_ASSETS"] ?? dir.appendingPathComponent("assets").path
}()
let haveAssets = FileManager.default.fileExists(atPath: assetsDirectory + "/models/vgg16_imagenet.onnx")

@Suite("ONNX import against onnxruntime")
struct ONNXTests {
    @Test("a torch export with folded batch norm, dropout, global pooling, Gemm and softmax")
    func smallTorch() throws {
        let m = try ONNXImporter.load(path: fixturePath("small_torch.onnx"))
        #expect(m.unsupported.isEmpty)
        #expect(m.chain!.layers.map(\.name).contains("Flatten"))
        let f = try SafetensorsFile(path: fixturePath("small_torch_ort.safetensors"))
        let ex = try Explainer(graph: m.graph, head: .identity, composite: try .preset("hp"))
        let out = try ex.embedding(try f.t("input"))
        expectClose(out, try f.t("logits").data, tol: 1e-4, "logits (softmax dropped)")
    }

    @Test("torch-exported VGG-16 features[:10]: torchvision indices and forward")
    func torchVGG() throws {
        let m = try ONNXImporter.load(path: fixturePath("vgg16_l10.onnx"))
        #expect(m.numbering == "module names")
        let reference = try VGG.vgg16.features(layers: 10, weights: try SafetensorsFile(path: fixturePath("vgg16_l10.safetensors")))
        #expect(m.chain == reference, "same layers, same indices, same weights as the safetensors load")
        let f = try SafetensorsFile(path: fixturePath("vgg16_l10_ort.safetensors"))
        let out = try Explainer(graph: m.graph, head: .identity, composite: try .preset("hp")).embedding(try f.t("input"))
        expectClose(out, try f.t("output").data, tol: 1e-4, "VGG-16 [:10] forward")
    }

    @Test("the real ImageNet VGG-16 (Keras export, channels-last): pool5 equals onnxruntime",
          .enabled(if: haveAssets))
    func realVGG16() throws {
        let m = try ONNXImporter.load(path: assetsDirectory + "/models/vgg16_imagenet.onnx", cut: .layers(31))
        #expect(m.channelsLastInput && m.inputShape == Shape3(3, 240, 240))
        let torchvisionLayout = try VGG.vgg16.features(seed: 1).layers.map { l -> String in
            if case .conv2d = l { return "conv" } else { return l.name }
        }
        #expect(m.chain!.layers.map { l -> String in if case .conv2d = l { return "conv" } else { return l.name } } == torchvisionLayout)
        // The same seeded input as the fixture script: NHWC uniforms * 255 - 128, here in CHW.
        var rng = SplitMix64(seed: 11)
        let nhwc = (0..<(240 * 240 * 3)).map { _ in Float(rng.nextUniform()) * 255 - 128 }
        var chw = [Float](repeating: 0, count: nhwc.count)
        for p in 0..<(240 * 240) { for c in 0..<3 { chw[c * 240 * 240 + p] = nhwc[p * 3 + c] } }
        let out = try Explainer(graph: m.graph, head: .identity, composite: try .preset("hp"))
            .embedding(try Tensor(shape: [3, 240, 240], data: chw))
        let expected = try SafetensorsFile(path: fixturePath("vgg16_imagenet_pool5_ort.safetensors")).t("pool5")
        expectClose(out, expected.data, tol: 1e-4, "pool5")
    }

    @Test("an unsupported op past the supported chain is an error naming the op and the node", .enabled(if: haveAssets))
    func unsupportedOp() throws {
        do {
            _ = try ONNXImporter.load(path: assetsDirectory + "/models/vgg16_imagenet.onnx", cut: .layers(40))
            Issue.record("expected an error")
        } catch {
            #expect("\(error)".contains("op Mul at node functional_1/batch_normalization_1/batchnorm/mul_1"))
        }
    }

    @Test("torch.onnx.export of ResNet-18 and ResNet-50 (a DAG: residual Adds, batch norms as nodes): every stage and the logits equal onnxruntime",
          arguments: [ResNet.resnet18, .resnet50])
    func resnetExport(arch: ResNet) throws {
        let f = try SafetensorsFile(path: fixturePath("\(arch.rawValue)_ort.safetensors"))
        // The committed file has empty initializers; the weights are the seeded ones the script used.
        let weights = try arch.randomWeights(seed: UInt64(f.metadata["seed"]!)!)
        let path = fixturePath("\(arch.rawValue)_noweights.onnx")
        let m = try ONNXImporter.load(path: path, weights: weights)
        #expect(m.numbering == "graph" && m.chain == nil && m.unsupported.isEmpty)
        let x = try f.t("input")
        for (cut, expected) in [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3"), ("layer4", "layer4"),
                                ("/fc/Gemm", "logits")] {
            let g = try ONNXImporter.load(path: path, cut: .node(cut), weights: weights).graph
            let out = try Explainer(graph: g, head: .identity, composite: try .preset("hp")).embedding(x)
            let ref = try f.t(expected)
            let err = zip(out, ref.data).map { abs($0 - $1) }.max()!, scale = ref.data.map(abs).max()!
            #expect(out.count == ref.count && err <= 1e-4 * scale, "\(arch) \(cut): \(err) of \(scale)")
        }
        // A module path of the export names its last node: a block, a convolution inside it.
        #expect(ONNXImporter.modulePaths("/layer1/layer1.0/conv1/Conv") == ["layer1", "layer1.0", "layer1.0.conv1"])
        let block = try ONNXImporter.load(path: path, cut: .node("layer1.0"), weights: weights).graph
        let lastReLU = arch == .resnet18 ? "relu_1" : "relu_2"  // a block's ReLU module runs 2 or 3 times
        #expect(block.nodes.last?.name == "/layer1/layer1.0/\(lastReLU)/Relu", "\(block.nodes.last?.name ?? "")")
        let conv = try ONNXImporter.load(path: path, cut: .node("layer1.0.conv1"), weights: weights).graph
        #expect(conv.nodes.last?.name == "/layer1/layer1.0/conv1/Conv", "\(conv.nodes.last?.name ?? "")")
        // The same network built in: the same forward.
        let builtIn = try arch.graph(cut: "layer4", seed: UInt64(f.metadata["seed"]!)!)
        let ours = try Explainer(graph: builtIn, head: .identity, composite: try .preset("hp")).embedding(x)
        expectClose(ours, try f.t("layer4").data, tol: 1e-4, "\(arch) built in, layer4")
    }

    @Test("ONNX graph errors: an index cut on a DAG, an unknown name, a file without weights")
    func graphErrors() throws {
        let path = fixturePath("resnet18_noweights.onnx")
        let w = try ResNet.resnet18.randomWeights(seed: 18)
        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "" } catch { return "\(error)" }
        }
        #expect(message { _ = try ONNXImporter.load(path: path, cut: .layers(10), weights: w) }
            .contains("is a graph, not a chain of layers: cut at a node name"))
        #expect(message { _ = try ONNXImporter.load(path: path, cut: .node("layer9"), weights: w) }
            .contains("no node, value or module is named 'layer9'"))
        #expect(message { _ = try ONNXImporter.load(path: path) }
            .contains("initializer 'conv1.weight' has no data"))
    }

    @Test("tensor dims that overflow or are negative are errors, not traps")
    func impossibleDims() {
        #expect(Tensor.count([2, 3]) == 6 && Tensor.count([]) == 1)
        #expect(Tensor.count([1 << 62, 4]) == nil && Tensor.count([2, -1]) == nil)
        #expect(throws: BiLRPError.self) { try Tensor(shape: [1 << 62, 4], data: []) }
    }

    @Test func notAnONNXFile() {
        do {
            _ = try ONNXImporter.load(data: Data("definitely not protobuf \u{1}\u{2}".utf8), name: "x.onnx")
            Issue.record("expected an error")
        } catch {
            #expect("\(error)".contains("x.onnx: not a valid ONNX model"))
        }
    }
}

@Suite("Images, NPY and safetensors")
struct ImageIOTests {
    static let images = ["gray8.png", "gray1.png", "gray16.png", "graya.png", "rgb.png", "rgba.png", "palette.png",
                         "rgb16.png", "baseline.jpg", "progressive.jpg", "gray.jpg"]

    @Test("every PNG colour type and depth, baseline and progressive JPEG, as Pillow decodes them", arguments: images)
    func decode(name: String) throws {
        let expected = try SafetensorsFile(path: fixturePath("images.safetensors")).t(name)
        let img = try RGBImage.load(path: fixturePath("images/" + name))
        #expect([img.height, img.width, 3] == expected.shape)
        // PNG is lossless (exact up to float rounding); JPEG decoders may differ by one level.
        let tol: Float = name.hasSuffix(".jpg") ? 2.5 / 255 : 1e-6
        let err = zip(img.pixels, expected.data).map { abs($0 - $1) }.max() ?? 1
        #expect(err <= tol, "\(name): max error \(err)")
    }

    @Test("real photos: size and pixels", .enabled(if: haveAssets), arguments: ["chelsea.png", "rocket.jpg", "motorcycle_left.png"])
    func realPhotos(name: String) throws {
        let e = try SafetensorsFile(path: fixturePath("images.safetensors")).t("asset:" + name)
        let img = try RGBImage.load(path: assetsDirectory + "/images/" + name)
        let rows = e.shape[0]
        #expect(img.height == Int(e.data[(rows - 1) * 5]) && img.width == Int(e.data[(rows - 1) * 5 + 1]))
        for r in 0..<(rows - 1) {
            let y = Int(e.data[r * 5]), x = Int(e.data[r * 5 + 1])
            for c in 0..<3 { #expect(abs(img[x, y, c] * 255 - e.data[r * 5 + 2 + c]) <= 2.5) }
        }
    }

    @Test("corrupt and truncated files are errors, not crashes", arguments: ["rgb.png", "baseline.jpg", "progressive.jpg"])
    func corrupt(name: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: fixturePath("images/" + name)))
        for cut in [data.count / 2, 20] {
            do {
                _ = try RGBImage.decode(data.prefix(cut), name: name)
                Issue.record("\(name) cut at \(cut) decoded")
            } catch {
                #expect("\(error)".contains("corrupt or truncated"), "\(error)")
            }
        }
        var damaged = data
        for i in stride(from: 40, to: min(damaged.count, 200), by: 7) { damaged[i] ^= 0x5A }
        #expect(throws: BiLRPError.self) { _ = try RGBImage.decode(damaged, name: name) }
        let m = (try? RGBImage.decode(Data("GIF89a....".utf8), name: "x.gif")).map { _ in "" }
        #expect(m == nil)
    }

    @Test("a PNG header announcing huge dimensions is refused before decoding")
    func hugeHeader() throws {
        var data = try Data(contentsOf: URL(fileURLWithPath: fixturePath("images/rgb.png")))
        // IHDR width and height at bytes 16..<24 (big-endian); the CRC no longer matches either.
        for i in 16..<24 { data[i] = i % 4 == 0 ? 0x00 : 0xFF }
        #expect(throws: BiLRPError.self) { _ = try RGBImage.decode(data, name: "huge.png", maxPixels: 1_000_000) }
    }

    @Test("antialiased resize keeps a constant image constant and averages when shrinking")
    func resize() throws {
        let flat = try RGBImage(width: 10, height: 6, pixels: [Float](repeating: 0.25, count: 180))
        #expect(flat.resized(width: 3, height: 4).pixels.allSatisfy { abs($0 - 0.25) < 1e-6 })
        // A 1-pixel checkerboard shrunk by 2 becomes its mean with antialiasing.
        let checker = try RGBImage(width: 8, height: 8, pixels: (0..<192).map { i in Float(((i / 3) % 8 + (i / 24)) % 2) })
        let small = checker.resized(width: 4, height: 4)
        #expect(small.pixels[15..<(small.pixels.count - 15)].allSatisfy { abs($0 - 0.5) < 0.13 })
        let crop = try RGBImage(width: 4, height: 2, pixels: (0..<24).map(Float.init)).centerCropped(width: 2, height: 2)
        #expect(crop.pixels == [3, 4, 5, 6, 7, 8, 15, 16, 17, 18, 19, 20])
    }

    @Test("PNG encode/decode round trip")
    func pngRoundTrip() throws {
        let img = try RGBImage(width: 5, height: 3, pixels: (0..<45).map { Float($0 * 5) / 255 })
        let back = try RGBImage.decode(try img.pngData())
        #expect(zip(back.pixels, img.pixels).allSatisfy { abs($0 - $1) < 1e-6 })
    }

    @Test("NPY round trip and its errors")
    func npy() throws {
        let t = try Tensor(shape: [2, 3], data: [1, 2, 3, 4, 5, -6])
        #expect(try NPY.decode(NPY.encode(t)) == t)
        let good = NPY.encode(t)
        func err(_ d: Data) -> String { do { _ = try NPY.decode(d, name: "x.npy"); return "" } catch { return "\(error)" } }
        #expect(err(good.prefix(good.count - 4)).contains("truncated"))
        func replacing(_ a: String, _ b: String) -> Data {
            let r = good.range(of: Data(a.utf8))!
            var d = good
            d.replaceSubrange(r, with: Data(b.utf8))
            return d
        }
        #expect(err(replacing("<f4", "<f8")).contains("unsupported dtype '<f8'"))
        #expect(err(replacing("False", "True ")).contains("Fortran-order"))
        #expect(err(Data("hello".utf8)).contains("not an NPY file"))
    }

    @Test("safetensors write/read in f32, f16 and bf16")
    func safetensorsRoundTrip() throws {
        let t = try Tensor(shape: [2, 2], data: [1.5, -2.25, 1e-3, 65000])
        for dtype in [SafetensorsFile.DType.f32, .f16, .bf16] {
            let f = try SafetensorsFile(data: try SafetensorsFile.encode(["w": t], dtype: dtype, metadata: ["k": "v"]))
            let back = try f.t("w")
            #expect(back.shape == [2, 2] && f.metadata["k"] == "v")
            let tol: Float = dtype == .f32 ? 0 : (dtype == .f16 ? 1e-3 : 8e-3)
            #expect(zip(back.data, t.data).allSatisfy { abs($0 - $1) <= tol * max(1, abs($1)) }, "\(dtype)")
        }
        #expect(throws: BiLRPError.self) { _ = try SafetensorsFile(data: Data([1, 2, 3])) }
    }
}
