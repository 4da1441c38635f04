/// The patches of an input: `patch` x `patch` squares in row-major order. When a side is not a
/// multiple of the patch size, the last row (column) of patches is narrower: it holds the
/// remaining pixels, so every pixel belongs to exactly one patch and pooling keeps the total.
public struct PatchGrid: Sendable, Equatable {
    public var height: Int, width: Int, patch: Int
    public init(height: Int, width: Int, patch: Int) {
        self.height = height; self.width = width; self.patch = patch
    }
    public var rows: Int { (height + patch - 1) / patch }
    public var columns: Int { (width + patch - 1) / patch }
    public var count: Int { rows * columns }

    /// The pixel rectangle of patch p: x in [x0, x1), y in [y0, y1), in model-input pixels.
    public func rectangle(_ p: Int) -> PatchRectangle {
        let r = p / columns, c = p % columns
        return PatchRectangle(
            index: p, row: r, column: c, x0: c * patch, y0: r * patch,
            x1: min(width, (c + 1) * patch), y1: min(height, (r + 1) * patch))
    }
}

public struct PatchRectangle: Sendable, Equatable, Codable {
    public var index: Int, row: Int, column: Int
    public var x0: Int, y0: Int, x1: Int, y1: Int
    public var centerX: Double { Double(x0 + x1) / 2 }
    public var centerY: Double { Double(y0 + y1) / 2 }
}

/// A(x): the P x h matrix of channel-summed, patch-pooled first-order maps, with the embedding.
public struct RelevanceFactors: Sendable {
    /// Row-major P x h.
    public let a: [Float]
    public let outputs: Int
    public let grid: PatchGrid
    public let inputShape: Shape3
    /// phi(x).
    public let embedding: [Float]

    /// sum_p A[p, m] for each m: with conservative rules, about phi_m(x).
    public var mapSums: [Float] {
        var s = [Double](repeating: 0, count: outputs)
        for p in 0..<grid.count { for m in 0..<outputs { s[m] += Double(a[p * outputs + m]) } }
        return s.map { Float($0) }
    }
}

/// How much of the similarity the explanation accounts for.
public struct ConservationReport: Sendable, Codable, Equatable {
    /// sum over all R[p, p'].
    public var relevanceSum: Double
    /// y.
    public var similarity: Double
    /// y - sum R (what biases and stabilizers absorbed).
    public var absorbed: Double
    /// |sum R - y| / |y|.
    public var relativeError: Double
    /// max over m of |sum_p A[p, m] - phi_m| / max_m |phi_m|, for each input.
    public var maxMapErrorFirst: Double
    public var maxMapErrorSecond: Double

    enum CodingKeys: String, CodingKey {
        case relevanceSum = "relevance_sum", similarity, absorbed, relativeError = "relative_error"
        case maxMapErrorFirst = "max_map_error_first", maxMapErrorSecond = "max_map_error_second"
    }
}

/// One entry of R with the two patches it joins.
public struct PatchPair: Sendable, Codable, Equatable {
    public var value: Float
    public var first: PatchRectangle
    public var second: PatchRectangle
}

/// The BiLRP explanation of one pair.
public struct PairExplanation: Sendable {
    /// R, row-major P x Q: row p is a patch of the first input, column q a patch of the second.
    public let relevance: [Float]
    public let first: RelevanceFactors
    public let second: RelevanceFactors
    /// <phi, phi'>.
    public let dot: Float
    /// y: the dot product, or the cosine.
    public let similarity: Float
    /// y / dot: 1, or 1 / (|phi| |phi'|) for cosine.
    public let scale: Float

    public var rows: Int { first.grid.count }
    public var columns: Int { second.grid.count }

    /// Row sums of R: the first-order explanation of y over the first input's patches.
    public var firstMarginal: [Float] {
        (0..<rows).map { p in
            var s: Double = 0
            for q in 0..<columns { s += Double(relevance[p * columns + q]) }
            return Float(s)
        }
    }

    /// Column sums of R: the first-order explanation of y over the second input's patches.
    public var secondMarginal: [Float] {
        var s = [Double](repeating: 0, count: columns)
        for p in 0..<rows { for q in 0..<columns { s[q] += Double(relevance[p * columns + q]) } }
        return s.map { Float($0) }
    }

    public var conservation: ConservationReport {
        let total = relevance.reduce(0.0) { $0 + Double($1) }
        let y = Double(similarity)
        func mapError(_ f: RelevanceFactors) -> Double {
            let sums = f.mapSums
            let scale = f.embedding.map { abs(Double($0)) }.max() ?? 0
            guard scale > 0 else { return 0 }
            return zip(sums, f.embedding).map { abs(Double($0) - Double($1)) }.max()! / scale
        }
        return ConservationReport(
            relevanceSum: total, similarity: y, absorbed: y - total,
            relativeError: y != 0 ? abs(total - y) / abs(y) : abs(total),
            maxMapErrorFirst: mapError(first), maxMapErrorSecond: mapError(second))
    }

    /// The output dimension m that carries most of R[p, q] = scale sum_m A[p, m] A'[q, m]: the term
    /// of R's sign with the largest magnitude, and its share of R[p, q] (for the tables model, the
    /// bigram that joins the two patches).
    public func dominantOutput(_ p: Int, _ q: Int) -> (output: Int, share: Float) {
        let h = first.outputs
        let r = relevance[p * columns + q]
        var best = 0, bestTerm: Float = 0
        for m in 0..<h {
            let term = scale * first.a[p * h + m] * second.a[q * h + m]
            if (r >= 0 ? term : -term) > (r >= 0 ? bestTerm : -bestTerm) { best = m; bestTerm = term }
        }
        return (best, r != 0 ? bestTerm / r : 0)
    }

    /// The k largest entries of R (most positive first).
    public func topPositive(_ k: Int) -> [PatchPair] { top(k, positive: true) }
    /// The k most negative entries of R (most negative first).
    public func topNegative(_ k: Int) -> [PatchPair] { top(k, positive: false) }

    /// For small k, one pass keeping the k best in a sorted array (ties: lower index first): a pair
    /// has 65,536 entries at 256 x 256 patches, and sorting them all cost the server most of a
    /// cached request.
    private func top(_ k: Int, positive: Bool) -> [PatchPair] {
        guard k > 0 else { return [] }
        let sign: Float = positive ? 1 : -1
        let chosen = k > 256 ? sortAll(k, sign) : select(k, sign)
        return chosen.map { i in
            PatchPair(value: relevance[i], first: first.grid.rectangle(i / columns),
                      second: second.grid.rectangle(i % columns))
        }
    }

    /// Indices of the k largest sign * R (all of them sorted, for large k).
    private func sortAll(_ k: Int, _ sign: Float) -> [Int] {
        let idx = relevance.indices.filter { sign * relevance[$0] > 0 }
        return Array(idx.sorted { a, b in
            let va = sign * relevance[a], vb = sign * relevance[b]
            return va != vb ? va > vb : a < b
        }.prefix(k))
    }

    private func select(_ k: Int, _ sign: Float) -> [Int] {
        var best: [(v: Float, i: Int)] = []  // by v descending, then i ascending
        best.reserveCapacity(k + 1)
        relevance.withUnsafeBufferPointer { r in
            for i in r.indices {
                let v = sign * r[i]
                guard v > 0, best.count < k || v > best[best.count - 1].v else { continue }
                var lo = 0, hi = best.count  // first position whose value is below v
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if best[mid].v >= v { lo = mid + 1 } else { hi = mid }
                }
                best.insert((v, i), at: lo)
                if best.count > k { best.removeLast() }
            }
        }
        return best.map(\.i)
    }
}
