/// Per-channel bounds of the normalized input domain, l <= x <= h, used by the z^B rule.
public struct InputBounds: Sendable, Equatable {
    public var lower: [Float], upper: [Float]
    public init(lower: [Float], upper: [Float]) throws {
        guard lower.count == upper.count, zip(lower, upper).allSatisfy({ $0 <= $1 }) else {
            throw BiLRPError.invalidArgument("input bounds: lower and upper need one value per channel with lower <= upper")
        }
        self.lower = lower; self.upper = upper
    }
}

/// How pixels become the model's input, and so the bounds z^B needs.
public enum Preprocessing: String, Sendable, CaseIterable {
    /// RGB scaled to [0, 1], then ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225):
    /// torchvision models and the paper's setup.
    case torchvision
    /// BGR in 0...255 minus the mean (103.939, 116.779, 123.68), no std: original Caffe/Keras VGG.
    case caffe
    /// One channel, the ink of a printed page: 1 - luminance (Rec. 601) in [0, 1], so blank paper is
    /// 0 (the tables model).
    case ink

    /// Channel order of the model input.
    public var isBGR: Bool { self == .caffe }
    /// Per-channel mean and std in model channel order, on the 0...1 (torchvision) or 0...255 scale.
    public var mean: [Float] {
        switch self {
        case .torchvision: return [0.485, 0.456, 0.406]
        case .caffe: return [103.939, 116.779, 123.68]
        case .ink: return [0]
        }
    }
    public var std: [Float] {
        switch self {
        case .torchvision: return [0.229, 0.224, 0.225]
        case .caffe: return [1, 1, 1]
        case .ink: return [1]
        }
    }
    /// Pixel value 255 maps to this before normalization.
    public var pixelScale: Float { self == .caffe ? 255 : 1 }

    /// l = (0 - mean) / std and h = (scale - mean) / std per channel.
    public var bounds: InputBounds {
        try! InputBounds(
            lower: zip(mean, std).map { (0 - $0) / $1 },
            upper: zip(mean, std).map { (pixelScale - $0) / $1 })
    }

    /// Normalizes an RGB image given as (3, H, W) values in [0, 1] into the model input.
    public func normalize(rgb: Tensor) throws -> Tensor {
        let s = try rgb.shape3("image")
        guard s.channels == 3 else {
            throw BiLRPError.shapeMismatch(what: "image", expected: "3 channels (RGB)", found: "\(s.channels)")
        }
        let plane = s.height * s.width
        if self == .ink {
            let ink = (0..<plane).map { i in
                1 - (0.299 * rgb.data[i] + 0.587 * rgb.data[plane + i] + 0.114 * rgb.data[2 * plane + i])
            }
            return try Tensor(shape: [1, s.height, s.width], data: ink.map { max(0, min(1, $0)) })
        }
        var out = [Float](repeating: 0, count: rgb.count)
        for c in 0..<3 {
            let src = isBGR ? 2 - c : c
            let m = mean[c], sd = std[c]
            for i in 0..<plane { out[c * plane + i] = (rgb.data[src * plane + i] * pixelScale - m) / sd }
        }
        return try Tensor(shape: rgb.shape, data: out)
    }
}
