/// The ResNet family as in torchvision (`resnet18` ... `resnet152`, v1.5: the stride of a
/// bottleneck on its 3 x 3 convolution), as a graph with torchvision's parameter names
/// (`conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`,
/// `fc.weight`).
///
/// Nodes are named after the modules: `conv1`, `bn1`, `relu`, `maxpool`, then per block
/// `layer2.0.conv1`, `layer2.0.bn1`, `layer2.0.relu1`, ..., `layer2.0.downsample.0` / `.1`,
/// `layer2.0.add` (the residual sum) and `layer2.0` (the block's ReLU, whose output is the block's),
/// then `avgpool`, `flatten`, `fc`. The stage names `layer1` ... `layer4` cut after the stage's last
/// block.
public enum ResNet: String, Sendable, CaseIterable {
    case resnet18, resnet34, resnet50, resnet101, resnet152

    var blocks: [Int] {
        switch self {
        case .resnet18: return [2, 2, 2, 2]
        case .resnet34, .resnet50: return [3, 4, 6, 3]
        case .resnet101: return [3, 4, 23, 3]
        case .resnet152: return [3, 8, 36, 3]
        }
    }

    var bottleneck: Bool { self != .resnet18 && self != .resnet34 }
    var expansion: Int { bottleneck ? 4 : 1 }

    /// Channels of the features after `layer4` (512 or 2048).
    public var featureChannels: Int { 512 * expansion }

    /// The names `cut` accepts besides node names, in order: the stem, the stages, the head.
    public var stageNames: [String] { ["conv1", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"] }

    /// The network up to `cut` (a node name or stage name; nil: everything the weights have, `fc`
    /// when they hold `fc.weight`, else `avgpool`), weights from `source` under torchvision's names.
    public func graph(cut: String? = nil, weights source: any TensorSource) throws -> Graph {
        let classes = try source.tensor(named: "fc.weight")?.shape.first
        return try build(cut: cut, classifier: classes) { name, shape in try source.required(name, shape: shape) }
    }

    /// The network with seeded random weights (He-normal convolutions, batch norms with nonzero
    /// statistics and affine parameters, a random fc): for benchmarks and tests.
    public func graph(cut: String? = nil, seed: UInt64) throws -> Graph {
        try build(cut: cut, classifier: 1000, weight: ResNet.seeded(seed))
    }

    /// The seeded weights of `graph(seed:)` by torchvision's names, as a tensor source (to load an
    /// ONNX export of the same network whose initializers were left empty).
    public func randomWeights(seed: UInt64) throws -> NamedTensors {
        var tensors: [String: Tensor] = [:]
        let draw = ResNet.seeded(seed)
        _ = try build(cut: nil, classifier: 1000) { name, shape in
            let v = try draw(name, shape)
            tensors[name] = try Tensor(shape: shape, data: v)
            return v
        }
        return NamedTensors(tensors)
    }

    static func seeded(_ seed: UInt64) -> (String, [Int]) throws -> [Float] {
        var rng = SplitMix64(seed: seed)
        return { name, shape in
            // One draw per value, in the order the tensors are built (torchvision's state_dict
            // order); scripts/make-fixtures.py draws the same values from the same generator.
            let n = shape.reduce(1, *)
            if name.hasSuffix("running_var") { return (0..<n).map { _ in Float(0.5 + rng.nextUniform()) } }
            if name.hasSuffix("running_mean") { return (0..<n).map { _ in Float(0.1 * rng.nextNormal()) } }
            if shape.count == 1 && name.hasSuffix("weight") {
                return (0..<n).map { _ in Float(0.75 + 0.5 * rng.nextUniform()) }
            }
            if shape.count == 1 { return (0..<n).map { _ in Float(0.05 * rng.nextNormal()) } }
            let std = (2.0 / Double(shape.dropFirst().reduce(1, *))).squareRoot()
            return (0..<n).map { _ in Float(rng.nextNormal() * std) }
        }
    }

    /// Every node name, in order (with `fc` last), and the stage names: what `cut` accepts.
    public var nodeNames: [String] {
        var names = ["conv1", "bn1", "relu", "maxpool"]
        for (stage, count) in blocks.enumerated() {
            for b in 0..<count {
                let p = "layer\(stage + 1).\(b)"
                let body = bottleneck ? ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3"]
                    : ["conv1", "bn1", "relu1", "conv2", "bn2"]
                names += body.map { "\(p).\($0)" }
                if b == 0 && (stage > 0 || bottleneck) { names += ["\(p).downsample.0", "\(p).downsample.1"] }
                names += ["\(p).add", p]
            }
        }
        return names + ["avgpool", "flatten", "fc"]
    }

    private func build(cut: String?, classifier classes: Int?, weight: (String, [Int]) throws -> [Float]) throws -> Graph {
        // The node the cut ends at: a stage ends at its last block's ReLU, a block is its ReLU.
        var target = cut
        if let cut, cut.hasPrefix("layer"), let s = Int(cut.dropFirst(5)), (1...4).contains(s) {
            target = "\(cut).\(blocks[s - 1] - 1)"
        }
        if let target, !nodeNames.contains(target) {
            throw BiLRPError.invalidArgument(
                "\(rawValue) has no node or stage named '\(cut!)' (stages: \(stageNames.joined(separator: ", ")); blocks like layer3.1; nodes like layer3.1.conv2; `bilrp inspect --arch \(rawValue)` lists them)")
        }
        if target == "fc", classes == nil { throw BiLRPError.missingTensor("fc.weight") }
        /// Thrown once the target node is built: the nodes past it (and their weights) are not needed.
        struct Reached: Error {}
        var nodes: [Graph.Node] = []
        func add(_ name: String, _ op: Graph.Op, _ inputs: [String]) throws -> String {
            nodes.append(Graph.Node(name: name, op: op, inputs: inputs, output: name))
            if name == target { throw Reached() }
            return name
        }
        func conv(_ name: String, _ from: String, _ inC: Int, _ outC: Int, kernel k: Int, stride: Int,
                  padding: Int) throws -> String {
            let w = try weight("\(name).weight", [outC, inC, k, k])
            return try add(name, .layer(.conv2d(try Conv2d(
                weight: w, bias: nil, outChannels: outC, inChannels: inC, kernel: (k, k), stride: (stride, stride),
                padding: (padding, padding)))), [from])
        }
        func bn(_ name: String, _ from: String, _ c: Int) throws -> String {
            try add(name, .layer(.batchNorm2d(try BatchNorm2d(
                weight: try weight("\(name).weight", [c]), bias: try weight("\(name).bias", [c]),
                runningMean: try weight("\(name).running_mean", [c]), runningVar: try weight("\(name).running_var", [c])))),
                [from])
        }
        func relu(_ name: String, _ from: String) throws -> String { try add(name, .layer(.relu), [from]) }

        do {
            var x = try relu("relu", try bn("bn1", try conv("conv1", "input", 3, 64, kernel: 7, stride: 2, padding: 3), 64))
            x = try add("maxpool", .layer(.maxPool2d(Pool2d(kernel: (3, 3), stride: (2, 2), padding: (1, 1)))), [x])
            var inC = 64
            for (stage, count) in blocks.enumerated() {
                let planes = 64 << stage
                for b in 0..<count {
                    let p = "layer\(stage + 1).\(b)"
                    let stride = b == 0 && stage > 0 ? 2 : 1
                    let outC = planes * expansion
                    var y: String
                    if bottleneck {
                        y = try relu("\(p).relu1", try bn("\(p).bn1", try conv("\(p).conv1", x, inC, planes, kernel: 1, stride: 1, padding: 0), planes))
                        y = try relu("\(p).relu2", try bn("\(p).bn2", try conv("\(p).conv2", y, planes, planes, kernel: 3, stride: stride, padding: 1), planes))
                        y = try bn("\(p).bn3", try conv("\(p).conv3", y, planes, outC, kernel: 1, stride: 1, padding: 0), outC)
                    } else {
                        y = try relu("\(p).relu1", try bn("\(p).bn1", try conv("\(p).conv1", x, inC, planes, kernel: 3, stride: stride, padding: 1), planes))
                        y = try bn("\(p).bn2", try conv("\(p).conv2", y, planes, planes, kernel: 3, stride: 1, padding: 1), planes)
                    }
                    var shortcut = x
                    if stride != 1 || inC != outC {
                        shortcut = try bn("\(p).downsample.1",
                                          try conv("\(p).downsample.0", x, inC, outC, kernel: 1, stride: stride, padding: 0), outC)
                    }
                    x = try relu(p, try add("\(p).add", .add, [y, shortcut]))
                    inC = outC
                }
            }
            x = try add("avgpool", .layer(.adaptiveAvgPool2d(height: 1, width: 1)), [x])
            guard let classes else {
                if target == "flatten" { _ = try add("flatten", .layer(.flatten), [x]) }  // reaches the target
                return try Graph(input: "input", nodes: nodes, output: x)
            }
            x = try add("flatten", .layer(.flatten), [x])
            let fcIn = featureChannels
            let w = try weight("fc.weight", [classes, fcIn]), bias = try weight("fc.bias", [classes])
            x = try add("fc", .layer(.linear(try Linear(weight: w, bias: bias, inFeatures: fcIn, outFeatures: classes))), [x])
            return try Graph(input: "input", nodes: nodes, output: x)
        } catch is Reached {
            return try Graph(input: "input", nodes: nodes, output: target!).cut(at: target!)
        }
    }
}
