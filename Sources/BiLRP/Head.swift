import Foundation

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny generator whose output is fixed by its definition,
/// so a seed gives the same projection on every platform and in the Python fixture script.
public struct SplitMix64: Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }

    /// The increment of the state per draw.
    public static let gamma: UInt64 = 0x9E37_79B9_7F4A_7C15

    public mutating func next() -> UInt64 {
        state &+= Self.gamma
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextUniform() -> Double { Double(next() >> 11) * 0x1p-53 }

    /// Standard normal by Box-Muller from two uniforms (cosine branch only):
    /// sqrt(-2 ln(1 - u1)) cos(2 pi u2).
    public mutating func nextNormal() -> Double {
        let u1 = nextUniform(), u2 = nextUniform()
        return (-2 * Foundation.log(1 - u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
    }
}

/// The linear map H from the feature map to the h outputs phi(x); it has no bias, so the pair
/// explanation stays conservative. Relevance goes through it with LRP-0, which for a bias-free
/// linear map is exact.
public enum SimilarityHead: Sendable, Equatable {
    /// phi = P vec(F) with P (h, D) Gaussian, entries N(0, 1/h), drawn row by row from
    /// `SplitMix64(seed)`; vec is the (C, H, W) flattening. The 1/h variance keeps <phi, phi'>
    /// an unbiased estimate of <vec F, vec F'> (Johnson-Lindenstrauss).
    case randomProjection(outputs: Int, seed: UInt64)
    /// phi = P vec(F) with a given matrix, shape (h, D) row-major like a `torch.nn.Linear` weight.
    case projection(Tensor)
    /// phi = vec(F): h = C H W.
    case identity
    /// phi_c = sum over space of F_c: h = C.
    case sumPool
    /// phi_c = mean over space of F_c: h = C.
    case averagePool

    /// The Gaussian projection matrix (h, D) of `.randomProjection`.
    public static func gaussianMatrix(outputs h: Int, inputs d: Int, seed: UInt64) -> [Float] {
        try! gaussianMatrix(outputs: h, inputs: d, seed: seed, cancellation: nil)
    }

    /// The same, checking `cancellation` after each row (a large head takes seconds to draw).
    public static func gaussianMatrix(outputs h: Int, inputs d: Int, seed: UInt64, cancellation: Cancellation?) throws
        -> [Float] {
        try [Float](unsafeUninitializedCapacity: h * d) { w, initialized in
            try drawGaussian(into: w.baseAddress!, outputs: h, inputs: d, seed: seed, cancellation: cancellation)
            initialized = h * d
        }
    }

    /// Draws the matrix into uninitialized memory, rows spread over the cores. Row r starts 2 d r
    /// draws into the SplitMix64 stream (two uniforms a value, and the generator's state after k
    /// draws is seed + k gamma), so any split gives the values of the sequential draw. Each row is
    /// written once (its pages fault in there, not in a zero fill before) and `cancellation` is
    /// checked before it: at h = 1000 over 524288 features, a row takes about 20 ms.
    static func drawGaussian(into w: UnsafeMutablePointer<Float>, outputs h: Int, inputs d: Int, seed: UInt64,
                             cancellation: Cancellation?) throws {
        let scale = 1 / Double(h).squareRoot()
        let workers = max(1, min(h, ProcessInfo.processInfo.activeProcessorCount))
        let next = RowCounter()
        nonisolated(unsafe) let w = w  // rows are disjoint
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            while cancellation?.isCancelled != true {
                let row = next.take()
                if row >= h { return }
                var rng = SplitMix64(seed: seed &+ UInt64(truncatingIfNeeded: 2 * d * row) &* SplitMix64.gamma)
                let out = w + row * d
                for j in 0..<d { out[j] = Float(rng.nextNormal() * scale) }
            }
        }
        try cancellation?.check()
    }

    /// Parses `random:H[:SEED]`, `identity`, `sumpool`, `avgpool` (a projection file is loaded by the caller).
    public init(parsing spec: String) throws {
        let parts = spec.lowercased().split(separator: ":").map(String.init)
        switch parts.first {
        case "random":
            guard parts.count >= 2, parts.count <= 3, let h = Int(parts[1]), h > 0 else {
                throw BiLRPError.invalidArgument("head '\(spec)': expected random:H[:SEED] with H > 0")
            }
            var seed: UInt64 = 0
            if parts.count == 3 {
                guard let s = UInt64(parts[2]) else {
                    throw BiLRPError.invalidArgument("head '\(spec)': seed must be a non-negative integer")
                }
                seed = s
            }
            self = .randomProjection(outputs: h, seed: seed)
        case "identity" where parts.count == 1: self = .identity
        case "sumpool" where parts.count == 1: self = .sumPool
        case "avgpool" where parts.count == 1: self = .averagePool
        default:
            throw BiLRPError.invalidArgument(
                "unknown head '\(spec)' (expected random:H[:SEED], identity, sumpool or avgpool)")
        }
    }

    public var description: String {
        switch self {
        case let .randomProjection(h, seed): return "random:\(h):\(seed)"
        case let .projection(t): return "projection(\(t.shape))"
        case .identity: return "identity"
        case .sumPool: return "sumpool"
        case .averagePool: return "avgpool"
        }
    }

    /// A projection matrix given as (h, D) or (D, h): oriented to (h, D) by matching D, the
    /// flattened feature size. Returns the matrix and a note saying which orientation was found.
    public static func orientProjection(_ t: Tensor, featureCount d: Int) throws -> (Tensor, String) {
        guard t.shape.count == 2 else {
            throw BiLRPError.shapeMismatch(what: "projection matrix", expected: "2 dimensions", found: "\(t.shape)")
        }
        let (r, c) = (t.shape[0], t.shape[1])
        if c == d { return (t, "projection (h=\(r), D=\(d)) read as (h, D) like a torch.nn.Linear weight") }
        if r == d {
            var data = [Float](repeating: 0, count: r * c)
            for i in 0..<r { for j in 0..<c { data[j * r + i] = t.data[i * c + j] } }
            return (try Tensor(shape: [c, r], data: data), "projection (D=\(d), h=\(c)) read as (D, h) and transposed")
        }
        throw BiLRPError.shapeMismatch(
            what: "projection matrix", expected: "(h, \(d)) or (\(d), h) for a feature map of \(d) values",
            found: "\(t.shape)")
    }
}

/// How the two embeddings are compared.
public enum Similarity: String, Sendable, CaseIterable {
    /// y = <phi, phi'>.
    case dot
    /// y = <phi, phi'> / (|phi| |phi'|), explained as the dot product times that constant.
    case cosine
}

/// The next row to draw, shared by the draw's workers.
final class RowCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var next = 0
    /// The next row, each handed out once.
    func take() -> Int { lock.withLock { defer { next += 1 }; return next } }
}
