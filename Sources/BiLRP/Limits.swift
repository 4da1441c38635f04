import Foundation

/// What explaining one input needs, computed from the shapes alone before anything is allocated,
/// so that a request that would exhaust memory is refused with an error instead of killing the
/// process (`random:1000000000` asks for an h x D projection of 32 TB at VGG-16's pool5).
public struct ExplanationRequirements: Sendable, Equatable {
    /// The input, (C, H, W).
    public var inputShape: Shape3
    /// The feature map at the cut, before the head.
    public var featureShape: Shape3
    /// h, the head's output count (for `identity` the feature count C H W).
    public var outputs: Int
    /// Patches of the input's grid (P).
    public var patches: Int
    /// Estimated peak bytes of one factor computation: the forward trace (each layer's input and
    /// output and up to two rule denominators), the head's h x D matrix, the backward's relevance
    /// blocks (four buffers of the largest layer per map, as `Explainer.blockSize` budgets them),
    /// and A (P x h). It leaves out the prepared weights, which the explainer already holds.
    public var estimatedBytes: Int
}

/// Bounds one explanation may not exceed; checked before any allocation of the factor computation.
///
/// `Explainer` checks `ResourceLimits.default` unless told otherwise: h at most 65 536 and an
/// estimated peak of at most three quarters of the machine's memory. A server sets tighter ones.
public struct ResourceLimits: Sendable, Equatable {
    /// The largest h (head outputs) an explanation may have.
    public var maxOutputs: Int
    /// The largest estimated peak memory of one factor computation or pair product, in bytes.
    public var maxBytes: Int

    public init(maxOutputs: Int, maxBytes: Int) {
        self.maxOutputs = maxOutputs
        self.maxBytes = maxBytes
    }

    public static var `default`: ResourceLimits {
        let physical = ProcessInfo.processInfo.physicalMemory
        return ResourceLimits(maxOutputs: 65_536, maxBytes: Int(clamping: physical / 4 * 3))
    }

    /// Throws `BiLRPError.limitExceeded` naming the limit when the requirements exceed it.
    public func check(_ r: ExplanationRequirements) throws {
        if r.outputs > maxOutputs {
            throw BiLRPError.limitExceeded(
                "the head would have \(r.outputs) outputs (h) for a feature map of \(r.featureShape), more than the limit of \(maxOutputs)")
        }
        if r.estimatedBytes > maxBytes {
            throw BiLRPError.limitExceeded(
                "the explanation would need about \(Self.megabytes(r.estimatedBytes)) of memory (h = \(r.outputs), features \(r.featureShape), input \(r.inputShape)), more than the limit of \(Self.megabytes(maxBytes))")
        }
    }

    static func megabytes(_ b: Int) -> String {
        b >= 1 << 30 ? String(format: "%.1f GiB", Double(b) / Double(1 << 30)) : "\(max(1, b >> 20)) MiB"
    }
}

/// A flag the caller sets to stop an explanation that is under way; the explainer checks it
/// between layers and between blocks of maps and then throws `BiLRPError.cancelled`, so a
/// computation nobody waits for any more frees its thread within one layer's time.
public final class Cancellation: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false

    public init() {}

    public func cancel() { lock.withLock { cancelled = true } }

    public var isCancelled: Bool { lock.withLock { cancelled } }

    /// Throws `BiLRPError.cancelled` once `cancel()` was called.
    public func check() throws {
        if isCancelled { throw BiLRPError.cancelled }
    }
}

/// Overflow-safe products and sums for the estimate (a request may ask for absurd sizes).
private func mul(_ a: Int, _ b: Int) -> Int {
    let (r, o) = a.multipliedReportingOverflow(by: b)
    return o ? Int.max : r
}

private func add(_ a: Int, _ b: Int) -> Int {
    let (r, o) = a.addingReportingOverflow(b)
    return o ? Int.max : r
}

extension SimilarityHead {
    /// h for a feature map of `shape`, without building the head.
    public func outputs(featureShape s: Shape3) -> Int {
        switch self {
        case let .randomProjection(h, _): return h
        case let .projection(t):
            guard t.shape.count == 2 else { return t.shape.first ?? 0 }
            return t.shape[1] == s.count ? t.shape[0] : t.shape[1]
        case .identity: return s.count
        case .sumPool, .averagePool: return s.channels
        }
    }
}

extension ExplanationRequirements {
    /// The estimate from the layers' input and output shapes (in order, the model's, without the
    /// head), the head and the input; `features` is the model's output shape (default: the last
    /// layer's output, right for a chain).
    public static func estimate(
        shapes: [(input: Shape3, output: Shape3)], head: SimilarityHead, input shape: Shape3, patch: Int,
        features featureShape: Shape3? = nil, blockSize: Int? = nil, memoryBudget: Int = 256 << 20
    ) throws -> ExplanationRequirements {
        guard patch >= 1 else { throw BiLRPError.invalidArgument("patch size must be at least 1 (got \(patch))") }
        var trace = 0, largest = shape.count
        var features = shape
        for (a, b) in shapes {
            trace = add(trace, mul(4, add(a.count, mul(3, b.count))))
            largest = max(largest, a.count, b.count)
            features = b
        }
        if let featureShape { features = featureShape }
        let h = head.outputs(featureShape: features)
        let headMatrix: Int
        switch head {
        case .randomProjection, .projection: headMatrix = mul(mul(h, features.count), 4)
        default: headMatrix = 0
        }
        largest = max(largest, h)
        let grid = PatchGrid(height: shape.height, width: shape.width, patch: patch)
        let block = max(1, min(h, blockSize ?? Explainer.maxBlock, memoryBudget / max(1, 16 * largest)))
        let backward = mul(mul(block, largest), 16)
        let factors = mul(mul(grid.count, h), 4)
        return ExplanationRequirements(
            inputShape: shape, featureShape: features, outputs: h, patches: grid.count,
            estimatedBytes: add(add(trace, headMatrix), add(backward, factors)))
    }
}

extension SequentialModel {
    /// What explaining an input of `shape` through this model and `head` needs, without preparing
    /// an explainer (a server refuses an oversized request before building anything for it).
    public func requirements(head: SimilarityHead, input shape: Shape3, patch: Int) throws -> ExplanationRequirements {
        try Graph(chain: self).requirements(head: head, input: shape, patch: patch)
    }
}

extension Graph {
    /// What explaining an input of `shape` through this graph and `head` needs, without preparing
    /// an explainer.
    public func requirements(head: SimilarityHead, input shape: Shape3, patch: Int, blockSize: Int? = nil,
                             memoryBudget: Int = 256 << 20) throws -> ExplanationRequirements {
        let s = try shapes(for: shape)
        return try .estimate(shapes: nodes.map { (input: s[$0.inputs[0]]!, output: s[$0.output]!) }, head: head,
                             input: shape, patch: patch, features: s[output]!, blockSize: blockSize,
                             memoryBudget: memoryBudget)
    }
}

extension Explainer {
    /// What explaining an input of `shape` with patches of `patch` pixels needs (no allocation).
    public func requirements(for shape: Shape3, patch: Int) throws -> ExplanationRequirements {
        try graph.requirements(head: head, input: shape, patch: patch, blockSize: blockSize, memoryBudget: memoryBudget)
    }
}
