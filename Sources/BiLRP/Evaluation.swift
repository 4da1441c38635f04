import Foundation

// Faithfulness of pair explanations: pair perturbation ("pair flipping") and correspondence accuracy.
// Everything here works on patch-pair scores (a P x Q matrix) and the model's forward pass only.

extension Similarity {
    /// <phi, phi'> and the factor y / <phi, phi'>: 1, or 1 / (|phi| |phi'|) for the cosine (0 when
    /// either embedding is zero).
    public func dotAndScale(_ a: [Float], _ b: [Float]) -> (dot: Double, scale: Double) {
        var dot = 0.0, na = 0.0, nb = 0.0
        for m in 0..<min(a.count, b.count) {
            dot += Double(a[m]) * Double(b[m]); na += Double(a[m]) * Double(a[m]); nb += Double(b[m]) * Double(b[m])
        }
        guard self == .cosine else { return (dot, 1) }
        let denominator = (na * nb).squareRoot()
        return (dot, denominator > 0 ? 1 / denominator : 0)
    }

    /// y(phi, phi'): the dot product, or the cosine.
    public func value(_ a: [Float], _ b: [Float]) -> Double {
        let (dot, scale) = dotAndScale(a, b)
        return dot * scale
    }
}

/// What a removed patch becomes, in the model's (normalized) input space.
public enum PerturbationBaseline: String, Sendable, CaseIterable, Codable {
    /// The same patch of the input blurred by a Gaussian of standard deviation one patch.
    case blur
    /// Each channel's mean over the input.
    case mean
    /// Zero (the preprocessing's mean colour for torchvision and caffe normalization).
    case zero

    /// The tensor whose pixels replace removed ones: same shape as `x`.
    public func fill(for x: Tensor, patch: Int) throws -> Tensor {
        let s = try x.shape3()
        let plane = s.height * s.width
        switch self {
        case .zero:
            return try Tensor(shape: x.shape, data: [Float](repeating: 0, count: x.count))
        case .mean:
            var out = x.data
            for c in 0..<s.channels {
                var sum = 0.0
                for i in 0..<plane { sum += Double(x.data[c * plane + i]) }
                let m = Float(sum / Double(plane))
                for i in 0..<plane { out[c * plane + i] = m }
            }
            return try Tensor(shape: x.shape, data: out)
        case .blur:
            return try Tensor(shape: x.shape, data: PerturbationBaseline.gaussianBlur(x.data, s, sigma: Double(patch)))
        }
    }

    /// A separable Gaussian blur of each channel, edges reflected (every weight lands on a pixel).
    static func gaussianBlur(_ data: [Float], _ s: Shape3, sigma: Double) -> [Float] {
        let radius = max(1, Int((3 * sigma).rounded(.up)))
        var w = (-radius...radius).map { exp(-Double($0 * $0) / (2 * sigma * sigma)) }
        let total = w.reduce(0, +)
        w = w.map { $0 / total }
        func reflect(_ i: Int, _ n: Int) -> Int {
            guard n > 1 else { return 0 }
            var i = i
            let period = 2 * (n - 1)
            i = ((i % period) + period) % period
            return i < n ? i : period - i
        }
        let plane = s.height * s.width
        var tmp = [Float](repeating: 0, count: data.count), out = tmp
        for c in 0..<s.channels {
            let base = c * plane
            for y in 0..<s.height {
                for x in 0..<s.width {
                    var acc = 0.0
                    for k in -radius...radius { acc += w[k + radius] * Double(data[base + y * s.width + reflect(x + k, s.width)]) }
                    tmp[base + y * s.width + x] = Float(acc)
                }
            }
            for y in 0..<s.height {
                for x in 0..<s.width {
                    var acc = 0.0
                    for k in -radius...radius { acc += w[k + radius] * Double(tmp[base + reflect(y + k, s.height) * s.width + x]) }
                    out[base + y * s.width + x] = Float(acc)
                }
            }
        }
        return out
    }
}

/// Scores over patch pairs by which an explanation ranks them: R itself, or a baseline's.
public struct PairRanking: Sendable {
    public var name: String
    public var rows: Int, columns: Int
    /// Row-major P x Q, like `PairExplanation.relevance`.
    public var scores: [Float]

    public init(name: String, rows: Int, columns: Int, scores: [Float]) throws {
        guard rows > 0, columns > 0, scores.count == rows * columns else {
            throw BiLRPError.shapeMismatch(what: "pair scores '\(name)'", expected: "\(rows) x \(columns)", found: "\(scores.count) values")
        }
        self.name = name; self.rows = rows; self.columns = columns; self.scores = scores
    }

    /// R of a pair explanation.
    public init(name: String, _ e: PairExplanation) {
        self.name = name; rows = e.rows; columns = e.columns; scores = e.relevance
    }

    /// The first-order baseline: r r'^T, the product of R's two marginals (each input's first-order
    /// explanation of y with the other input held fixed).
    public static func marginalProduct(name: String, _ e: PairExplanation) -> PairRanking {
        let r = e.firstMarginal, c = e.secondMarginal
        var s = [Float](repeating: 0, count: r.count * c.count)
        for p in r.indices { for q in c.indices { s[p * c.count + q] = r[p] * c[q] } }
        return PairRanking(name: name, rows: r.count, columns: c.count, unchecked: s)
    }

    /// Scores drawn uniformly in [0, 1) from a seed: a random ranking.
    public static func random(rows: Int, columns: Int, seed: UInt64) -> PairRanking {
        var g = SplitMix64(seed: seed)
        let s = (0..<(rows * columns)).map { _ in Float(g.next() >> 40) / Float(1 << 24) }
        return PairRanking(name: "random", rows: rows, columns: columns, unchecked: s)
    }

    init(name: String, rows: Int, columns: Int, unchecked scores: [Float]) {
        self.name = name; self.rows = rows; self.columns = columns; self.scores = scores
    }

    /// Pair indices p * Q + q from the highest score to the lowest (ties: lower index first).
    public func order() -> [Int] {
        scores.indices.sorted { a, b in scores[a] != scores[b] ? scores[a] > scores[b] : a < b }
    }
}

/// The patches of both inputs in the order a ranking of pairs removes them: walking the pairs from
/// the first, each pair removes those of its two patches not yet removed. Every patch appears once.
public struct RemovalSequence: Sendable, Equatable {
    public struct Event: Sendable, Equatable {
        /// false: a patch of the first input; true: of the second.
        public var second: Bool
        public var patch: Int
    }
    public let events: [Event]
    public let rows: Int, columns: Int

    public init(order: [Int], rows: Int, columns: Int) {
        var removedFirst = [Bool](repeating: false, count: rows), removedSecond = [Bool](repeating: false, count: columns)
        var events: [Event] = []
        events.reserveCapacity(rows + columns)
        for i in order {
            if events.count == rows + columns { break }
            let p = i / columns, q = i % columns
            if !removedFirst[p] { removedFirst[p] = true; events.append(Event(second: false, patch: p)) }
            if !removedSecond[q] { removedSecond[q] = true; events.append(Event(second: true, patch: q)) }
        }
        self.events = events; self.rows = rows; self.columns = columns
    }

    /// The number of events after step k of `steps`: round(k (P + Q) / steps).
    public func count(step k: Int, of steps: Int) -> Int {
        Int((Double(k * events.count) / Double(steps)).rounded())
    }

    /// The patches of each input removed by the first n events.
    public func removed(first n: Int) -> (first: [Bool], second: [Bool]) {
        var a = [Bool](repeating: false, count: rows), b = [Bool](repeating: false, count: columns)
        for e in events.prefix(n) { if e.second { b[e.patch] = true } else { a[e.patch] = true } }
        return (a, b)
    }
}

/// y as the patches go, and the area under it.
public struct PerturbationCurve: Sendable, Codable, Equatable {
    /// The fraction of all P + Q patches removed at each step, 0 to 1.
    public var fractions: [Double]
    /// y at each step.
    public var similarity: [Double]
    /// y / y(x, x') at each step.
    public var normalized: [Double]
    /// The trapezoid area under `normalized` over `fractions`.
    public var auc: Double

    public init(fractions: [Double], similarity: [Double]) {
        self.fractions = fractions; self.similarity = similarity
        let y0 = similarity.first ?? 0
        normalized = similarity.map { y0 != 0 ? $0 / y0 : 0 }
        auc = PerturbationCurve.area(fractions, normalized)
    }

    static func area(_ x: [Double], _ y: [Double]) -> Double {
        guard x.count > 1 else { return 0 }
        var total = 0.0
        for i in 1..<x.count {
            let width: Double = x[i] - x[i - 1]
            total += width * (y[i] + y[i - 1]) / 2
        }
        return total
    }
}

/// Pair perturbation: remove patch pairs in a ranking's order, both patches replaced by a baseline
/// and kept removed, and record y after each step. The steps are fractions of the P + Q patches, so
/// a curve costs at most 2 (steps) forward passes whatever the ranking (no backward).
public struct PairFlipping: Sendable {
    public var steps: Int
    public var baseline: PerturbationBaseline

    public init(steps: Int = 12, baseline: PerturbationBaseline = .mean) throws {
        guard steps >= 1 else { throw BiLRPError.invalidArgument("the number of perturbation steps must be at least 1 (got \(steps))") }
        self.steps = steps; self.baseline = baseline
    }

    /// One input and the tensor its removed patches are taken from.
    public struct Side: Sendable {
        public var input: Tensor
        public var fill: Tensor
        public var grid: PatchGrid
        public init(input: Tensor, fill: Tensor, grid: PatchGrid) {
            self.input = input; self.fill = fill; self.grid = grid
        }
    }

    /// The input with the marked patches replaced by the fill.
    public static func perturbed(_ side: Side, removed: [Bool]) throws -> Tensor {
        let s = try side.input.shape3()
        var data = side.input.data
        let plane = s.height * s.width
        for p in removed.indices where removed[p] {
            let r = side.grid.rectangle(p)
            for c in 0..<s.channels {
                for y in r.y0..<r.y1 {
                    for x in r.x0..<r.x1 { data[c * plane + y * s.width + x] = side.fill.data[c * plane + y * s.width + x] }
                }
            }
        }
        return try Tensor(shape: side.input.shape, data: data)
    }

    /// The curve of one ordering. `embed` is phi (the model's forward pass and head).
    public func curve(order: [Int], first: Side, second: Side, similarity: Similarity,
                      embed: (Tensor) throws -> [Float]) throws -> PerturbationCurve {
        let P = first.grid.count, Q = second.grid.count
        let sequence = RemovalSequence(order: order, rows: P, columns: Q)
        guard sequence.events.count == P + Q else {
            throw BiLRPError.invalidArgument("the ordering of \(order.count) pairs does not reach every patch of a \(P) x \(Q) pair")
        }
        var fractions: [Double] = [], values: [Double] = []
        var lastA: [Bool]? = nil, lastB: [Bool]? = nil
        var phiA: [Float] = [], phiB: [Float] = []
        for k in 0...steps {
            let n = sequence.count(step: k, of: steps)
            let (a, b) = sequence.removed(first: n)
            if a != lastA { phiA = try embed(try PairFlipping.perturbed(first, removed: a)); lastA = a }
            if b != lastB { phiB = try embed(try PairFlipping.perturbed(second, removed: b)); lastB = b }
            fractions.append(Double(n) / Double(P + Q))
            values.append(similarity.value(phiA, phiB))
        }
        return PerturbationCurve(fractions: fractions, similarity: values)
    }
}

/// Where each pixel of the first input is in the second: the ground truth of a pair, from a dense
/// offset field, point matches, or a synthetic transform.
public struct Correspondence: Sendable {
    /// The first input's size.
    public let width: Int, height: Int
    /// Per pixel (row-major), where its centre lands in the second input, in pixels (x, y); NaN
    /// where unknown. 2 W H values.
    public let targets: [Float]
    /// Dense: a patch's match needs half of its pixels known; sparse (points): one.
    public let dense: Bool

    public init(width: Int, height: Int, targets: [Float], dense: Bool) throws {
        guard width > 0, height > 0, targets.count == 2 * width * height else {
            throw BiLRPError.shapeMismatch(what: "correspondence", expected: "\(height) x \(width) x 2 values", found: "\(targets.count)")
        }
        self.width = width; self.height = height; self.targets = targets; self.dense = dense
    }

    /// From an (H, W, 2) offset field: pixel (x, y)'s centre is at (x + 0.5 + dx, y + 0.5 + dy) in
    /// the second input; NaN offsets are unknown.
    public init(offsets: Tensor) throws {
        guard offsets.shape.count == 3, offsets.shape[2] == 2 else {
            throw BiLRPError.shapeMismatch(what: "correspondence offsets", expected: "(H, W, 2)", found: "\(offsets.shape)")
        }
        let h = offsets.shape[0], w = offsets.shape[1]
        var t = [Float](repeating: .nan, count: 2 * w * h)
        for y in 0..<h {
            for x in 0..<w {
                let i = y * w + x, dx = offsets.data[2 * i], dy = offsets.data[2 * i + 1]
                guard dx.isFinite, dy.isFinite else { continue }
                t[2 * i] = Float(x) + 0.5 + dx; t[2 * i + 1] = Float(y) + 0.5 + dy
            }
        }
        try self.init(width: w, height: h, targets: t, dense: true)
    }

    /// From point matches (x, y) -> (x', y') in pixel coordinates; a point marks the pixel it lies in.
    public init(width: Int, height: Int, points: [(Double, Double, Double, Double)]) throws {
        var t = [Float](repeating: .nan, count: 2 * width * height)
        for (i, m) in points.enumerated() {
            let x = Int(m.0.rounded(.down)), y = Int(m.1.rounded(.down))
            guard x >= 0, x < width, y >= 0, y < height else {
                throw BiLRPError.invalidArgument("point match \(i + 1) at (\(m.0), \(m.1)) is outside the \(width) x \(height) first input")
            }
            t[2 * (y * width + x)] = Float(m.2); t[2 * (y * width + x) + 1] = Float(m.3)
        }
        try self.init(width: width, height: height, targets: t, dense: false)
    }

    /// The true match of patch `r` of the first input: the mean target of its known pixels, or nil
    /// when too few are known (dense: fewer than half; points: none) or the match is outside the
    /// second input (`secondSize`: width, height).
    public func match(of r: PatchRectangle, secondSize: (Int, Int)) -> (x: Double, y: Double)? {
        var sx = 0.0, sy = 0.0, n = 0
        for y in r.y0..<r.y1 {
            for x in r.x0..<r.x1 {
                let i = 2 * (y * width + x)
                guard targets[i].isFinite, targets[i + 1].isFinite else { continue }
                sx += Double(targets[i]); sy += Double(targets[i + 1]); n += 1
            }
        }
        let pixels = (r.x1 - r.x0) * (r.y1 - r.y0)
        guard n > 0, !dense || 2 * n >= pixels else { return nil }
        let m = (x: sx / Double(n), y: sy / Double(n))
        guard m.x >= 0, m.x < Double(secondSize.0), m.y >= 0, m.y < Double(secondSize.1) else { return nil }
        return m
    }
}

/// How well a ranking's pairs agree with the true correspondence.
public struct CorrespondenceScores: Sendable, Codable, Equatable {
    /// Of the k highest positive pairs whose first patch has a known match (every pair under
    /// labels), the fraction whose second patch is the match (within the tolerance; under labels:
    /// holds a label of the first).
    public var precisionAtK: Double
    /// k asked, and the pairs counted (fewer when fewer positive pairs exist).
    public var k: Int, counted: Int
    /// Over the most relevant first patches with a known match (the top `fraction` by the
    /// ranking's row sums), the fraction whose highest-scoring second patch is the match.
    public var bestMatchAccuracy: Double
    public var firstPatches: Int
    /// What a uniformly random pair scores: the mean over the first patches precision at k ranks
    /// (with a known match; every patch under labels) of the share of second patches that count
    /// as the match.
    public var chance: Double

    enum CodingKeys: String, CodingKey {
        case precisionAtK = "precision_at_k", k, counted, bestMatchAccuracy = "best_match_accuracy"
        case firstPatches = "first_patches", chance
    }
}

/// Labelled boxes on one input: which parts of it hold what (the digit pairs of a table page, the
/// objects of a photo). Two patches match when they hold a label in common.
public struct PatchLabels: Sendable, Equatable {
    public struct Box: Sendable, Equatable {
        public var label: String
        /// Model-input pixels: x in [x0, x1), y in [y0, y1).
        public var x0: Double, y0: Double, x1: Double, y1: Double
        public init(label: String, x0: Double, y0: Double, x1: Double, y1: Double) {
            self.label = label; self.x0 = x0; self.y0 = y0; self.x1 = x1; self.y1 = y1
        }
    }
    public let boxes: [Box]

    /// Every box non-empty, finite and overlapping the `width` x `height` input (a box outside it
    /// is almost always in other coordinates: an error, not a silently empty label).
    public init(boxes: [Box], width: Int, height: Int, source: String = "labels") throws {
        for (i, b) in boxes.enumerated() {
            guard [b.x0, b.y0, b.x1, b.y1].allSatisfy(\.isFinite), b.x0 < b.x1, b.y0 < b.y1 else {
                throw BiLRPError.invalidArgument("\(source): box \(i + 1) ('\(b.label)') is empty or not finite: [\(b.x0), \(b.y0), \(b.x1), \(b.y1)]")
            }
            guard b.x1 > 0, b.y1 > 0, b.x0 < Double(width), b.y0 < Double(height) else {
                throw BiLRPError.invalidArgument("\(source): box \(i + 1) ('\(b.label)') at [\(b.x0), \(b.y0), \(b.x1), \(b.y1)] lies outside the \(width) x \(height) input (boxes are in the pixels the model sees)")
            }
            guard !b.label.isEmpty else { throw BiLRPError.invalidArgument("\(source): box \(i + 1) has an empty label") }
        }
        self.boxes = boxes
    }

    /// Per patch of `grid`, the sorted ids (into `ids`) of the labels whose boxes it overlaps.
    func perPatch(_ grid: PatchGrid, ids: [String: Int]) -> [[Int]] {
        var out = [[Int]](repeating: [], count: grid.count)
        for b in boxes {
            guard let id = ids[b.label] else { continue }
            let c0 = max(0, Int((b.x0 / Double(grid.patch)).rounded(.down)))
            let c1 = min(grid.columns - 1, Int((b.x1 / Double(grid.patch)).rounded(.up)) - 1)
            let r0 = max(0, Int((b.y0 / Double(grid.patch)).rounded(.down)))
            let r1 = min(grid.rows - 1, Int((b.y1 / Double(grid.patch)).rounded(.up)) - 1)
            guard c0 <= c1, r0 <= r1 else { continue }
            for r in r0...r1 { for c in c0...c1 { out[r * grid.columns + c].append(id) } }
        }
        return out.map { Array(Set($0)).sorted() }
    }
}

/// The truth as patch pairs, and the scores of a ranking against it.
public struct PatchTruth: Sendable {
    public let first: PatchGrid, second: PatchGrid
    enum Kind: Sendable {
        /// Per first patch, its true match point in the second input (nil: unknown), and the
        /// pixels by which a second patch is grown when checked against it.
        case points([(x: Double, y: Double)?], tolerance: Double)
        /// Per patch of each input, the ids of the labels it holds.
        case labels(first: [[Int]], second: [[Int]])
    }
    let kind: Kind

    /// From a correspondence: second patch q matches first patch p when p's true match point
    /// lies in q grown by `tolerance` pixels.
    public init(_ c: Correspondence, first: PatchGrid, second: PatchGrid, tolerance: Double) throws {
        guard c.width == first.width, c.height == first.height else {
            throw BiLRPError.shapeMismatch(what: "correspondence", expected: "the first input's \(first.width) x \(first.height) pixels",
                                           found: "\(c.width) x \(c.height)")
        }
        self.first = first; self.second = second
        kind = .points((0..<first.count).map { c.match(of: first.rectangle($0), secondSize: (second.width, second.height)) },
                       tolerance: tolerance)
    }

    /// From labelled boxes: patches p and q match when each overlaps a box of one label (the
    /// same digit pair on two table pages). A patch that holds no label matches nothing.
    public init(labels a: PatchLabels, _ b: PatchLabels, first: PatchGrid, second: PatchGrid) {
        var ids: [String: Int] = [:]
        for box in a.boxes + b.boxes where ids[box.label] == nil { ids[box.label] = ids.count }
        self.first = first; self.second = second
        kind = .labels(first: a.perPatch(first, ids: ids), second: b.perPatch(second, ids: ids))
    }

    /// Whether second patch q is a true match of first patch p.
    public func isMatch(_ p: Int, _ q: Int) -> Bool {
        switch kind {
        case let .points(matches, tolerance):
            guard let m = matches[p] else { return false }
            let r = second.rectangle(q)
            return m.x >= Double(r.x0) - tolerance && m.x < Double(r.x1) + tolerance
                && m.y >= Double(r.y0) - tolerance && m.y < Double(r.y1) + tolerance
        case let .labels(a, b):
            // Both sorted: a merge walk.
            var i = 0, j = 0
            let la = a[p], lb = b[q]
            while i < la.count && j < lb.count {
                if la[i] == lb[j] { return true }
                if la[i] < lb[j] { i += 1 } else { j += 1 }
            }
            return false
        }
    }

    /// First patches whose truth is known: with a match point, or holding a label.
    public var knownFirst: [Int] {
        switch kind {
        case let .points(matches, _): return matches.indices.filter { matches[$0] != nil }
        case let .labels(a, _): return a.indices.filter { !a[$0].isEmpty }
        }
    }

    public var knownFirstPatches: Int { knownFirst.count }

    /// The first patches whose pairs precision at k ranks: those with a known match point (where
    /// the match is unknown nothing can be said), or every patch under labels (a top pair on a
    /// patch without a label is a miss).
    var rankedFirst: [Int] {
        switch kind {
        case .points: return knownFirst
        case .labels: return Array(0..<first.count)
        }
    }

    public func scores(_ ranking: PairRanking, k: Int, fraction: Double) throws -> CorrespondenceScores {
        guard ranking.rows == first.count, ranking.columns == second.count else {
            throw BiLRPError.shapeMismatch(what: "pair scores", expected: "\(first.count) x \(second.count)",
                                           found: "\(ranking.rows) x \(ranking.columns)")
        }
        let Q = second.count, s = ranking.scores
        let known = knownFirst
        // Precision at k over the positive pairs of the ranked first patches.
        var candidates: [Int] = []
        for p in rankedFirst { for q in 0..<Q where s[p * Q + q] > 0 { candidates.append(p * Q + q) } }
        candidates.sort { s[$0] != s[$1] ? s[$0] > s[$1] : $0 < $1 }
        let top = candidates.prefix(k)
        let hits = top.filter { isMatch($0 / Q, $0 % Q) }.count
        // Best match of the most relevant first patches (by the ranking's row sums).
        func rowSum(_ p: Int) -> Double { (0..<Q).reduce(0.0) { $0 + Double(s[p * Q + $1]) } }
        let sums = Dictionary(uniqueKeysWithValues: known.map { ($0, rowSum($0)) })
        let chosen = known.sorted { sums[$0]! != sums[$1]! ? sums[$0]! > sums[$1]! : $0 < $1 }
            .prefix(max(known.isEmpty ? 0 : 1, Int((fraction * Double(known.count)).rounded())))
        let best = chosen.filter { p in
            var bq = 0
            for q in 1..<Q where s[p * Q + q] > s[p * Q + bq] { bq = q }
            return isMatch(p, bq)
        }.count
        let ranked = rankedFirst
        let chance = ranked.isEmpty ? 0
            : ranked.reduce(0.0) { acc, p in acc + Double((0..<Q).filter { isMatch(p, $0) }.count) / Double(Q) } / Double(ranked.count)
        return CorrespondenceScores(
            precisionAtK: top.isEmpty ? 0 : Double(hits) / Double(top.count), k: k, counted: top.count,
            bestMatchAccuracy: chosen.isEmpty ? 0 : Double(best) / Double(chosen.count), firstPatches: chosen.count,
            chance: chance)
    }
}

/// How well a similarity tells related pairs from unrelated ones: the area under the ROC curve
/// (the chance that a random related pair scores above a random unrelated one, ties counting
/// half).
public struct Separation: Sendable, Codable, Equatable {
    public var rocAUC: Double
    public var related: Int, unrelated: Int

    enum CodingKeys: String, CodingKey { case rocAUC = "roc_auc", related, unrelated }

    /// nil when either group is empty.
    public init?(related: [Double], unrelated: [Double]) {
        guard !related.isEmpty, !unrelated.isEmpty else { return nil }
        // Mann-Whitney: ranks over both groups (ties share their mean rank).
        let all = (related.map { ($0, true) } + unrelated.map { ($0, false) }).sorted { $0.0 < $1.0 }
        var rankSum = 0.0, i = 0
        while i < all.count {
            var j = i
            while j + 1 < all.count && all[j + 1].0 == all[i].0 { j += 1 }
            let rank = Double(i + j) / 2 + 1
            for k in i...j where all[k].1 { rankSum += rank }
            i = j + 1
        }
        let n1 = Double(related.count), n0 = Double(unrelated.count)
        rocAUC = (rankSum - n1 * (n1 + 1) / 2) / (n1 * n0)
        self.related = related.count; self.unrelated = unrelated.count
    }
}
