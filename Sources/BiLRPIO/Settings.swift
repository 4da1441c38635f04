import BiLRP
import Foundation

/// Everything that defines an explanation setup, as the CLI and the server take it.
public struct ExplanationSettings: Sendable, Codable, Equatable {
    /// An ONNX file (`--model`), or safetensors weights with a built-in architecture (`--weights`, `--arch`).
    public var model: String?
    public var weights: String?
    /// vgg11, vgg13, vgg16, vgg19, with `-bn` for batch norm variants (e.g. `vgg16-bn`); resnet18,
    /// resnet34, resnet50, resnet101, resnet152.
    public var arch: String = "vgg16"
    /// Where to cut: an integer keeps a chain's layers [0, L) (`features[:L]`: 31 is after pool5 of
    /// VGG-16); a name cuts at that node or stage (`layer4` of a ResNet). nil: all of `features`
    /// for a VGG, `layer4` for a ResNet; required for ONNX models.
    public var layer: LayerCut?
    /// `random:H[:SEED]`, `identity`, `sumpool`, `avgpool`; or a projection file with `projection`.
    public var head: String = "random:100:0"
    public var projection: String?
    public var similarity: String = "dot"
    /// A preset name or a composite string.
    public var rules: String = "paper-vgg"
    public var patch: Int = 8
    /// Images are resized (shorter side) and center-cropped to size x size; 0 keeps them as they are.
    public var size: Int = 224
    /// torchvision, caffe, ink (one channel, 1 - luminance: the tables model), or auto (caffe for
    /// channels-last ONNX models exported from Keras, else torchvision).
    public var preprocess: String = "auto"
    public var topK: Int = 10

    public init() {}

    /// `--model tables`: the committed tables model (`models/tables/`, from the working directory)
    /// with its own defaults: ink preprocessing, pages as they are, the bigram histogram as phi
    /// (head identity), rules `tables`.
    public static var tables: ExplanationSettings {
        var s = ExplanationSettings()
        s.weights = "models/tables/tables.safetensors"
        s.arch = "tables"; s.preprocess = "ink"; s.size = 0; s.head = "identity"; s.rules = "tables"
        return s
    }

    /// Whether these settings build the tables model (`--arch tables` from safetensors): its pages'
    /// minimum size, its outputs named as bigrams, its default cut and pair picture hang on this.
    public var isTablesModel: Bool { weights != nil && arch.lowercased() == "tables" }

    /// How the pair picture groups pairs: by matched regions for the tables model (pages of
    /// thousands of patches, where digits match digits), else a curve per patch pair.
    public var pairGrouping: PairPictureStyle.Grouping { isTablesModel ? .regions : .patches }

    /// `model` as the model source: `tables` (any case) is the committed tables model with its
    /// defaults (`tables`; the patch size, similarity, projection and top k stay), anything else
    /// an ONNX file.
    public func choosingModel(_ model: String) -> ExplanationSettings {
        guard model.lowercased() == "tables" else {
            var s = self
            s.model = model; s.weights = nil
            return s
        }
        var s = ExplanationSettings.tables
        s.patch = patch; s.similarity = similarity; s.projection = projection; s.topK = topK
        return s
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case model, weights, arch, layer, head, projection, similarity, rules, patch, size, preprocess
        case topK = "top_k"
    }

    /// The settings a decoded object starts from (in `JSONDecoder.userInfo`); absent keys keep
    /// these values, so a partial configuration file fills the rest from the defaults.
    public static let decodingBase = CodingUserInfoKey(rawValue: "bilrp.settings.base")!

    /// Decodes a JSON object of settings: every key optional (absent keys keep the base's value,
    /// `ExplanationSettings()` unless `decodingBase` says otherwise), an unknown key an error.
    public init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        self = decoder.userInfo[Self.decodingBase] as? ExplanationSettings ?? ExplanationSettings()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        // The model source is one choice: a file that names either replaces the base's.
        if c.contains(.model) || c.contains(.weights) {
            let m = try c.decodeIfPresent(String.self, forKey: .model), w = try c.decodeIfPresent(String.self, forKey: .weights)
            // "model": "tables" brings the tables model's defaults; the keys below override them.
            if let m { self = choosingModel(m) } else { model = nil; weights = nil }
            if let w { weights = w }
        }
        arch = try c.decodeIfPresent(String.self, forKey: .arch) ?? arch
        if c.contains(.layer) { layer = try c.decodeIfPresent(LayerCut.self, forKey: .layer) }
        head = try c.decodeIfPresent(String.self, forKey: .head) ?? head
        if c.contains(.projection) { projection = try c.decodeIfPresent(String.self, forKey: .projection) }
        similarity = try c.decodeIfPresent(String.self, forKey: .similarity) ?? similarity
        rules = try c.decodeIfPresent(String.self, forKey: .rules) ?? rules
        patch = try c.decodeIfPresent(Int.self, forKey: .patch) ?? patch
        size = try c.decodeIfPresent(Int.self, forKey: .size) ?? size
        preprocess = try c.decodeIfPresent(String.self, forKey: .preprocess) ?? preprocess
        topK = try c.decodeIfPresent(Int.self, forKey: .topK) ?? topK
    }

    public func validate() throws {
        guard patch >= 1 else { throw BiLRPError.invalidArgument("--patch must be at least 1 (got \(patch))") }
        guard size >= 0 else { throw BiLRPError.invalidArgument("--size must be 0 (keep) or positive (got \(size))") }
        guard topK >= 0 else { throw BiLRPError.invalidArgument("--top must be >= 0 (got \(topK))") }
        guard Similarity(rawValue: similarity) != nil else {
            throw BiLRPError.invalidArgument("unknown similarity '\(similarity)' (expected dot or cosine)")
        }
        guard ["auto", "torchvision", "caffe", "ink"].contains(preprocess) else {
            throw BiLRPError.invalidArgument("unknown preprocessing '\(preprocess)' (expected torchvision, caffe, ink or auto)")
        }
        if model != nil && weights != nil {
            throw BiLRPError.invalidArgument("give either --model (ONNX) or --weights (safetensors), not both")
        }
    }
}

/// A loaded model with its explainer and what it was built from.
public struct LoadedExplainer: Sendable {
    public var explainer: Explainer
    public var settings: ExplanationSettings
    public var preprocessing: Preprocessing
    /// The model as loaded (cut at `settings.layer`); a request may cut it further.
    public var graph: Graph
    public var source: String
    /// For JSON output: what was loaded, in words.
    public var notes: [String]

    public init(explainer: Explainer, settings: ExplanationSettings, preprocessing: Preprocessing,
                graph: Graph, source: String, notes: [String]) {
        self.explainer = explainer; self.settings = settings; self.preprocessing = preprocessing
        self.graph = graph; self.source = source; self.notes = notes
    }

    /// The architectures `--arch` knows.
    public static let architectures = VGG.allCases.flatMap { [$0.rawValue, "\($0.rawValue)-bn"] }
        + ResNet.allCases.map(\.rawValue) + ["tables"]

    /// Builds the model, head and rules from settings. `kernels` selects the C or the reference path.
    public static func load(_ s: ExplanationSettings, kernels: any Kernels = CKernelsBackend(),
                            limits: ResourceLimits = .default) throws -> LoadedExplainer {
        try s.validate()
        var notes: [String] = []
        let model: Graph
        let source: String
        var preprocess = Preprocessing(rawValue: s.preprocess)
        if let path = s.model {
            guard let l = s.layer else {
                throw BiLRPError.invalidArgument("--layer is required with an ONNX model (run `bilrp inspect \(path)` to see the indices and names)")
            }
            let cut: ONNXImporter.Cut
            switch l {
            case let .index(i): cut = .layers(i)
            case let .name(n): cut = .node(n)
            }
            let onnx = try ONNXImporter.load(path: path, cut: cut)
            model = onnx.graph
            source = path
            notes.append("ONNX model from \(onnx.producer.isEmpty ? "unknown producer" : onnx.producer), layers numbered by \(onnx.numbering)")
            if onnx.channelsLastInput { notes.append("channels-last input transposed to (C, H, W)") }
            if preprocess == nil { preprocess = onnx.channelsLastInput ? .caffe : .torchvision }
        } else if let path = s.weights {
            model = try architecture(s.arch, cut: s.layer, weights: try SafetensorsFile(path: path))
            source = path
        } else {
            throw BiLRPError.invalidArgument("no model: give --model FILE.onnx or --weights FILE.safetensors --arch vgg16")
        }
        let pre = preprocess ?? .torchvision
        let head: SimilarityHead
        if let p = s.projection {
            head = .projection(p.lowercased().hasSuffix(".npy") ? try NPY.read(path: p) : try projectionFromSafetensors(p))
        } else {
            head = try SimilarityHead(parsing: s.head)
        }
        let composite = try Composite.named(s.rules)
        let explainer = try Explainer(
            graph: model, head: head, similarity: Similarity(rawValue: s.similarity)!, composite: composite,
            bounds: pre.bounds, kernels: kernels, limits: limits)
        return LoadedExplainer(explainer: explainer, settings: s, preprocessing: pre, graph: model, source: source, notes: notes)
    }

    /// A built-in architecture with weights by torchvision's names, cut as asked (default: all of a
    /// VGG's `features`, a ResNet's `layer4`).
    public static func architecture(_ arch: String, cut: LayerCut?, weights: any TensorSource) throws -> Graph {
        if arch.lowercased() == "tables" {
            switch cut {
            case nil: return try TablesModel.graph(weights: weights)
            case let .name(n): return try TablesModel.graph(weights: weights, cut: n)
            case let .index(i):
                throw BiLRPError.invalidArgument("tables is a graph: cut it at a node name (H, bigrams, phi), not at index \(i)")
            }
        }
        if let r = ResNet(rawValue: arch.lowercased()) {
            switch cut {
            case nil: return try r.graph(cut: "layer4", weights: weights)
            case let .name(n): return try r.graph(cut: n, weights: weights)
            case let .index(i):
                throw BiLRPError.invalidArgument(
                    "\(r.rawValue) is a graph, not a chain of layers: cut it at a stage or node name (layer3, layer4, avgpool, layer4.1.conv2), not at index \(i)")
            }
        }
        let (vgg, bn) = try parseArch(arch)
        switch cut {
        case nil: return Graph(chain: try vgg.features(batchNorm: bn, weights: weights))
        case let .index(i): return Graph(chain: try vgg.features(layers: i, batchNorm: bn, weights: weights))
        case let .name(n):
            // A chain's nodes are named by their index: node N ends features[:N + 1].
            let count = vgg.featureCount(batchNorm: bn)
            guard let i = Int(n), (0..<count).contains(i) else {
                throw BiLRPError.invalidArgument(
                    "\(arch) has no node named '\(n)': its nodes are named by their index, 0...\(count - 1)")
            }
            return Graph(chain: try vgg.features(layers: i + 1, batchNorm: bn, weights: weights))
        }
    }

    /// Parses `vgg16`, `vgg16-bn`, ... into the architecture and its batch-norm flag.
    public static func parseArch(_ a: String) throws -> (VGG, Bool) {
        let lower = a.lowercased()
        let bn = lower.hasSuffix("-bn") || lower.hasSuffix("_bn")
        let base = bn ? String(lower.dropLast(3)) : lower
        guard let v = VGG(rawValue: base) else {
            throw BiLRPError.invalidArgument("unknown architecture '\(a)' (expected \(architectures.joined(separator: ", ")))")
        }
        return (v, bn)
    }

    static func projectionFromSafetensors(_ path: String) throws -> Tensor {
        let f = try SafetensorsFile(path: path)
        let names = f.names
        guard let name = names.first(where: { $0.hasSuffix("weight") }) ?? (names.count == 1 ? names.first : nil),
              let t = try f.tensor(named: name) else {
            throw BiLRPError.invalidArgument("projection file '\(path)': expected one tensor (or one named '*weight'), found \(names)")
        }
        return t
    }

    /// Where a built-in architecture ends when no cut is given (`architecture(_:cut:weights:)`).
    var defaultCut: String {
        if settings.isTablesModel { return "phi (the bigram histogram)" }
        guard settings.weights != nil, ResNet(rawValue: settings.arch.lowercased()) != nil else { return "the end of features" }
        return "layer4"
    }

    /// What the pictures' legend says about this setup, for a pair of inputs (their file names).
    public func caption(inputs: (String, String)) -> PictureCaption {
        let s = settings
        let file = (source as NSString).lastPathComponent
        let model = s.weights != nil ? "\(s.arch) (\(file))" : file
        let layer = s.layer.map { l -> String in
            if case .index = l { return "layer \(l)" }
            return "\(l)"
        } ?? defaultCut
        let head = s.projection.map { "projection \(($0 as NSString).lastPathComponent)" } ?? s.head
        return PictureCaption(model: model, layer: layer, head: head, rules: s.rules, similarity: s.similarity,
                              inputs: ((inputs.0 as NSString).lastPathComponent, (inputs.1 as NSString).lastPathComponent))
    }

    /// Loads an input image (or .npy tensor) with these settings.
    public func input(_ path: String, maxPixels: Int = RGBImage.defaultMaxPixels) throws -> PreparedInput {
        try checked(try PreparedInput.load(path: path, size: settings.size == 0 ? nil : settings.size,
                                           preprocessing: preprocessing, maxPixels: maxPixels))
    }

    /// An input from image bytes (server).
    public func input(data: Data, name: String, maxPixels: Int) throws -> PreparedInput {
        var img = try RGBImage.decode(data, name: name, maxPixels: maxPixels)
        if settings.size > 0 { img = img.resizedAndCropped(to: settings.size) }
        return try checked(PreparedInput(tensor: try preprocessing.normalize(rgb: img.planar), display: img, source: name))
    }

    /// A page for the tables model must hold a line of digits: at least `TablesModel.minimumPageSide`
    /// pixels each way (smaller pages would fail inside the detector's pooling or the bigram shifts).
    func checked(_ input: PreparedInput) throws -> PreparedInput {
        guard settings.isTablesModel else { return input }
        let s = try input.tensor.shape3("page")
        let m = TablesModel.minimumPageSide
        guard s.height >= m, s.width >= m else {
            throw BiLRPError.invalidArgument("'\(input.source)' is a page of \(s.width) x \(s.height) pixels; the tables model needs at least \(m) x \(m) (a line of digits)")
        }
        return input
    }
}

/// The JSON document of one pair explanation (`bilrp explain --json`, the server's answer).
public struct ExplanationReport: Codable, Sendable {
    public struct ModelInfo: Codable, Sendable {
        public var source: String
        public var layers: Int
        public var head: String
        public var outputs: Int
        public var similarity: String
        public var rules: String
        public var preprocess: String
        public var notes: [String]
    }
    public struct Input: Codable, Sendable {
        public var source: String
        public var shape: [Int]
        public var patch_rows: Int
        public var patch_columns: Int
    }
    public struct Pair: Codable, Sendable {
        public var value: Float
        public var first: PatchRectangle
        public var second: PatchRectangle
        /// The tables model only: the bigram (histogram dimension d1 * 10 + d2, as "d1d2") with the
        /// largest share of this pair's R, and that share.
        public var bigram: String? = nil
        public var bigram_share: Float? = nil
    }

    public var similarity: Float
    public var dot: Float
    public var conservation: ConservationReport
    public var model: ModelInfo
    public var patch: Int
    public var inputs: [Input]
    /// How R is laid out in the NPY file and in patch indices.
    public var matrix_layout: String
    public var top_positive: [Pair]
    public var top_negative: [Pair]
    public var timings: [String: Double]
    /// Server extras (absent from the CLI's JSON): the pictures as base64 PNG, R as base64 NPY.
    public var pair_png: String? = nil
    public var heatmap_png: String? = nil
    public var matrix_npy: String? = nil

    public init(_ e: PairExplanation, loaded: LoadedExplainer, sources: (String, String), timings: [String: Double]) {
        let s = loaded.settings
        similarity = e.similarity
        dot = e.dot
        conservation = e.conservation
        model = ModelInfo(
            source: loaded.source, layers: loaded.graph.nodes.count, head: loaded.explainer.head.description,
            outputs: e.first.outputs, similarity: s.similarity, rules: loaded.explainer.composite.description,
            preprocess: loaded.preprocessing.rawValue, notes: loaded.notes)
        patch = e.first.grid.patch
        func input(_ f: RelevanceFactors, _ src: String) -> Input {
            Input(source: src, shape: [f.inputShape.channels, f.inputShape.height, f.inputShape.width],
                  patch_rows: f.grid.rows, patch_columns: f.grid.columns)
        }
        inputs = [input(e.first, sources.0), input(e.second, sources.1)]
        matrix_layout = "R is P x Q row-major (float32): R[p, q] at p * Q + q; patch p = row * patch_columns + column of the first input, q likewise of the second"
        let bigrams = s.isTablesModel && e.first.outputs == 100
        func pair(_ t: PatchPair) -> Pair {
            var r = Pair(value: t.value, first: t.first, second: t.second)
            if bigrams {
                let d = e.dominantOutput(t.first.index, t.second.index)
                r.bigram = "\(d.output / 10)\(d.output % 10)"
                r.bigram_share = d.share
            }
            return r
        }
        top_positive = e.topPositive(s.topK).map(pair)
        top_negative = e.topNegative(s.topK).map(pair)
        self.timings = timings
    }

    public func json() throws -> Data { try ReportJSON.encode(self) }
}

/// How the reports are written: pretty, keys sorted, non-finite floats as "inf", "-inf", "nan".
public enum ReportJSON {
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try enc.encode(value)
    }
}
