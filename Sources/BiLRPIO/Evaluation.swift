import BiLRP
import Foundation

/// One pair to evaluate: two images, or an image and a transform of it (a known correspondence),
/// optionally with ground truth (a correspondence file, or a labels file per image) and whether
/// the two should be similar.
public struct EvaluationPair: Sendable, Equatable {
    public var name: String
    public var first: String
    public var second: String?
    public var transform: SyntheticTransform?
    public var correspondence: String?
    /// Labelled boxes of each image (JSON files): patches holding one label should match.
    public struct LabelFiles: Sendable, Equatable {
        public var first: String, second: String
        public init(first: String, second: String) { self.first = first; self.second = second }
    }
    public var labels: LabelFiles?
    /// Whether the two should be similar (true) or not (false); the report gives the similarity's
    /// separation of the two groups.
    public var related: Bool?

    public init(name: String? = nil, first: String, second: String? = nil, transform: SyntheticTransform? = nil,
                correspondence: String? = nil, labels: LabelFiles? = nil, related: Bool? = nil) throws {
        guard (second == nil) != (transform == nil) else {
            throw BiLRPError.invalidArgument("pair '\(first)': give a second image or a transform, not \(second == nil ? "neither" : "both")")
        }
        guard transform == nil || (correspondence == nil && labels == nil) else {
            throw BiLRPError.invalidArgument("pair '\(first)': a transform brings its own correspondence; drop the correspondence or labels files")
        }
        guard correspondence == nil || labels == nil else {
            throw BiLRPError.invalidArgument("pair '\(first)': give one ground truth, a correspondence or labels, not both")
        }
        let base = { (p: String) in ((p as NSString).lastPathComponent as NSString).deletingPathExtension }
        self.name = name ?? (second.map { "\(base(first)) vs \(base($0))" } ?? "\(base(first)) vs \(transform!)")
        self.first = first; self.second = second; self.transform = transform; self.correspondence = correspondence
        self.related = related
        self.labels = labels
    }

    /// A CSV with a header naming its columns: `first` and either `second` or `transform` per row,
    /// optional `correspondence`, `first_labels` and `second_labels` (both or neither), `related`
    /// (true or false) and `name`. Relative paths are relative to the CSV's folder; `#`
    /// starts a comment line; a field with commas is quoted ("shift:16,8").
    public static func list(csv path: String) throws -> [EvaluationPair] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw BiLRPError.io(FileManager.default.fileExists(atPath: path) ? "cannot read '\(path)'" : "no such file: '\(path)'")
        }
        let folder = (path as NSString).deletingLastPathComponent
        func resolve(_ p: String) -> String { p.hasPrefix("/") || folder.isEmpty ? p : (folder as NSString).appendingPathComponent(p) }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
            .map { ($0.offset + 1, $0.element.trimmingCharacters(in: .whitespaces)) }
            .filter { !$0.1.isEmpty && !$0.1.hasPrefix("#") }
        guard let header = lines.first else { throw BiLRPError.invalidArgument("the pair list '\(path)' is empty") }
        let columns = try fields(header.1, path, header.0).map { $0.lowercased() }
        let known = ["name", "first", "second", "transform", "correspondence", "first_labels", "second_labels", "related"]
        for c in columns where !known.contains(c) {
            throw BiLRPError.invalidArgument("the pair list '\(path)': unknown column '\(c)' (expected \(known.joined(separator: ", ")))")
        }
        guard columns.contains("first"), columns.contains("second") || columns.contains("transform") else {
            throw BiLRPError.invalidArgument("the pair list '\(path)' needs a header line with the columns first and second (or transform)")
        }
        var pairs: [EvaluationPair] = []
        for (number, line) in lines.dropFirst() {
            let fields = try fields(line, path, number)
            guard fields.count == columns.count else {
                throw BiLRPError.invalidArgument("the pair list '\(path)' line \(number): \(fields.count) fields, the header has \(columns.count)")
            }
            var row: [String: String] = [:]
            for (c, f) in zip(columns, fields) where !f.isEmpty { row[c] = f }
            guard let first = row["first"] else { throw BiLRPError.invalidArgument("the pair list '\(path)' line \(number): no first image") }
            guard (row["first_labels"] == nil) == (row["second_labels"] == nil) else {
                throw BiLRPError.invalidArgument("the pair list '\(path)' line \(number): give first_labels and second_labels together")
            }
            var related: Bool? = nil
            if let r = row["related"] {
                switch r.lowercased() {
                case "true", "yes", "1": related = true
                case "false", "no", "0": related = false
                default: throw BiLRPError.invalidArgument("the pair list '\(path)' line \(number): related is '\(r)' (expected true or false)")
                }
            }
            do {
                pairs.append(try EvaluationPair(name: row["name"], first: resolve(first), second: row["second"].map(resolve),
                                                transform: try row["transform"].map(SyntheticTransform.init(parsing:)),
                                                correspondence: row["correspondence"].map(resolve),
                                                labels: row["first_labels"].map { LabelFiles(first: resolve($0), second: resolve(row["second_labels"]!)) },
                                                related: related))
            } catch let e as BiLRPError {
                throw BiLRPError.invalidArgument("the pair list '\(path)' line \(number): \(e)")
            }
        }
        guard !pairs.isEmpty else { throw BiLRPError.invalidArgument("the pair list '\(path)' holds no pairs (only its header)") }
        return pairs
    }

    /// One CSV line's fields, trimmed; double quotes around a field keep its commas ("" is a quote).
    static func fields(_ line: String, _ path: String, _ number: Int) throws -> [String] {
        var fields: [String] = [], field = "", quoted = false
        var chars = line.makeIterator()
        while let c = chars.next() {
            if quoted {
                if c == "\"" {
                    var lookahead = chars
                    if lookahead.next() == "\"" { field.append("\""); chars = lookahead } else { quoted = false }
                } else {
                    field.append(c)
                }
            } else if c == "\"" && field.trimmingCharacters(in: .whitespaces).isEmpty {
                quoted = true; field = ""
            } else if c == "," {
                fields.append(field.trimmingCharacters(in: .whitespaces)); field = ""
            } else {
                field.append(c)
            }
        }
        guard !quoted else { throw BiLRPError.invalidArgument("the pair list '\(path)' line \(number): a quote is not closed") }
        fields.append(field.trimmingCharacters(in: .whitespaces))
        return fields
    }
}

/// How `Evaluation` perturbs and scores.
public struct EvaluationOptions: Sendable, Codable, Equatable {
    /// Perturbation steps per curve (fractions of the patches); 0: no curves (the ground truth's
    /// scores and the similarity only).
    public var steps = 12
    public var baseline: PerturbationBaseline = .mean
    /// Random orderings per pair.
    public var seeds = 3
    /// k of the precision at k.
    public var topK = 20
    /// Pixels by which a second patch is grown when checked against the true match (nil: half a patch).
    public var tolerance: Double? = nil
    /// The share of first patches (the most relevant) whose best match is checked.
    public var bestMatchFraction = 0.25

    public init() {}

    public func validate() throws {
        guard steps >= 0 else { throw BiLRPError.invalidArgument("--steps must be at least 0 (got \(steps))") }
        guard seeds >= 1 else { throw BiLRPError.invalidArgument("--seeds must be at least 1 (got \(seeds))") }
        guard topK >= 1 else { throw BiLRPError.invalidArgument("--top-k must be at least 1 (got \(topK))") }
        if let t = tolerance, !(t >= 0) { throw BiLRPError.invalidArgument("--tolerance must be >= 0 pixels (got \(t))") }
        guard bestMatchFraction > 0, bestMatchFraction <= 1 else {
            throw BiLRPError.invalidArgument("--best-fraction must be in (0, 1] (got \(bestMatchFraction))")
        }
    }

    enum CodingKeys: String, CodingKey {
        case steps, baseline, seeds, topK = "top_k", tolerance, bestMatchFraction = "best_match_fraction"
    }
}

/// Every number of an evaluation (`bilrp eval --json`).
public struct EvaluationReport: Sendable, Codable {
    /// One ordering on one pair: its two curves and, with ground truth, its correspondence scores.
    public struct Ordering: Sendable, Codable {
        public var name: String
        /// Most relevant pairs removed first (lower area: the explanation found what matters); nil
        /// with no perturbation steps.
        public var mostRelevantFirst: PerturbationCurve?
        /// Least relevant first (higher area is better).
        public var leastRelevantFirst: PerturbationCurve?
        /// Random: the area of each seed's curves (the curves above are their mean).
        public var seedAUCs: [[Double]]?
        public var correspondence: CorrespondenceScores?

        enum CodingKeys: String, CodingKey {
            case name, mostRelevantFirst = "most_relevant_first", leastRelevantFirst = "least_relevant_first"
            case seedAUCs = "seed_aucs", correspondence
        }
    }
    public struct Pair: Sendable, Codable {
        public var name: String
        public var first: String
        public var second: String
        /// y(x, x').
        public var similarity: Double
        /// Whether the pair should be similar, when the pair list says.
        public var related: Bool?
        /// The relative conservation error of each rule setting's R (none when nothing asked for
        /// an explanation: no curves, no ground truth).
        public var conservation: [String: Double]
        public var orderings: [Ordering]
        public var seconds: Double
    }
    /// Over the pairs: mean and standard deviation (population, n in `pairs`), and the median with
    /// the quartiles (linear interpolation), which one pair with y(x, x') near zero cannot move.
    public struct Statistic: Sendable, Codable, Equatable {
        public var mean: Double, std: Double, pairs: Int
        public var median: Double, q1: Double, q3: Double
        public init(_ v: [Double]) {
            pairs = v.count
            let m = v.isEmpty ? Double.nan : v.reduce(0, +) / Double(v.count)
            mean = m
            std = v.isEmpty ? .nan : (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count)).squareRoot()
            let sorted = v.sorted()
            median = Statistic.quantile(sorted, 0.5); q1 = Statistic.quantile(sorted, 0.25); q3 = Statistic.quantile(sorted, 0.75)
        }
        /// The q-quantile of sorted values, interpolated between the two nearest ranks.
        static func quantile(_ sorted: [Double], _ q: Double) -> Double {
            guard !sorted.isEmpty else { return .nan }
            let position = q * Double(sorted.count - 1)
            let lower = Int(position.rounded(.down)), upper = min(lower + 1, sorted.count - 1)
            let t = position - Double(lower)
            return sorted[lower] * (1 - t) + sorted[upper] * t
        }
    }
    public struct Summary: Sendable, Codable {
        public var name: String
        public var mostRelevantFirstAUC: Statistic
        public var leastRelevantFirstAUC: Statistic
        /// Least-relevant-first area minus most-relevant-first area, per pair.
        public var gap: Statistic
        /// Over the pairs with ground truth where every ordering has a positive pair (precision at
        /// k of no pairs is undefined: a pair whose y is 0 has none).
        public var precisionAtK: Statistic?
        public var bestMatchAccuracy: Statistic?
        public var chance: Statistic?
        /// Pairs with ground truth left out of the three above: some ordering has no positive pair.
        public var unscored: Int = 0
        /// The normalized curves over the pairs, per step: mean and standard deviation, median and
        /// quartiles.
        public var mostRelevantFirst: [Statistic]
        public var leastRelevantFirst: [Statistic]

        enum CodingKeys: String, CodingKey {
            case name, mostRelevantFirstAUC = "most_relevant_first_auc", leastRelevantFirstAUC = "least_relevant_first_auc", gap
            case precisionAtK = "precision_at_k", bestMatchAccuracy = "best_match_accuracy", chance, unscored
            case mostRelevantFirst = "most_relevant_first", leastRelevantFirst = "least_relevant_first"
        }
    }
    public struct Layer: Sendable, Codable {
        public var layer: String
        public var pairs: [Pair]
        public var summary: [Summary]
        /// The fractions of patches removed at each step (the same for every curve of a pair
        /// size; those of the first pair).
        public var fractions: [Double]
        /// y's separation of the pairs marked related from those marked unrelated.
        public var separation: Separation?
    }

    public var model: String
    public var size: Int
    public var patch: Int
    public var head: String
    public var similarity: String
    public var rules: [String]
    public var options: EvaluationOptions
    public var layers: [Layer]

    public func json() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try enc.encode(self)
    }

    /// The table `bilrp eval` prints: per layer and ordering, the means over the pairs.
    public func table() -> String {
        var out: [String] = []
        func f(_ s: EvaluationReport.Statistic?) -> String {
            guard let s, s.pairs > 0 else { return "-" }
            return String(format: "%.3f ± %.3f", s.mean, s.std)
        }
        func robust(_ s: EvaluationReport.Statistic) -> String {
            guard s.pairs > 0 else { return "-" }
            return String(format: "%.3f (%.3f ± %.3f)", s.median, s.mean, s.std)
        }
        for l in layers {
            out.append("\(l.layer), \(size == 0 ? "original size" : "\(size) x \(size)"), \(l.pairs.count) pairs, baseline \(options.baseline.rawValue), \(options.steps) steps")
            let header = ["ordering", "AUC most first (lower better)", "AUC least first (higher better)", "gap (least - most)",
                          "precision@\(options.topK)", "best match", "chance"]
            var rows = [header]
            for s in l.summary {
                rows.append([s.name, robust(s.mostRelevantFirstAUC), robust(s.leastRelevantFirstAUC), robust(s.gap), f(s.precisionAtK),
                             f(s.bestMatchAccuracy), s.chance.map { String(format: "%.3f", $0.mean) } ?? "-"])
            }
            let widths = (0..<header.count).map { c in rows.map { $0[c].count }.max()! }
            // No orderings (no curves, no ground truth): only the similarity below.
            for r in rows where !l.summary.isEmpty {
                out.append("  " + r.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                    .joined(separator: "  "))
            }
            if options.steps > 0 {
                out.append("  AUC: median over the pairs (mean ± standard deviation); a pair whose y(x, x') is near zero moves the mean, not the median")
            }
            let known = l.summary.first?.precisionAtK?.pairs ?? 0
            out.append(known > 0
                ? "  precision@\(options.topK) and best match: over the \(known) pairs with ground truth (a correspondence or labels); chance is a random pair's"
                : "  no pair has ground truth (a correspondence or labels): no precision or best-match scores")
            if let unscored = l.summary.first?.unscored, unscored > 0 {
                out.append("  \(unscored) pair(s) with ground truth left out of precision and best match: some ordering has no positive pair there (precision of no pairs is undefined)")
            }
            if options.steps == 0 { out.append("  --steps 0: no perturbation curves") }
            if let sep = l.separation {
                out.append(String(format: "  similarity separates the %d related pairs from the %d unrelated ones with ROC AUC %.3f",
                                  sep.related, sep.unrelated, sep.rocAUC))
            }
        }
        return out.joined(separator: "\n")
    }
}

/// Measures how faithful pair explanations are: pair perturbation against HP, the product of the
/// first-order marginals and random orderings, and, where the correspondence is known, how often
/// the top pairs are true matches.
public enum Evaluation {
    /// What a pair's top patch pairs are checked against.
    public enum Truth: Sendable {
        case correspondence(Correspondence)
        case labels(PatchLabels, PatchLabels)

        func patches(first: PatchGrid, second: PatchGrid, tolerance: Double) throws -> PatchTruth {
            switch self {
            case let .correspondence(c): return try PatchTruth(c, first: first, second: second, tolerance: tolerance)
            case let .labels(a, b): return PatchTruth(labels: a, b, first: first, second: second)
            }
        }
    }

    /// A pair as the model sees it, with its ground truth.
    public struct PreparedPair: Sendable {
        public var pair: EvaluationPair
        public var first: PreparedInput, second: PreparedInput
        public var truth: Truth?
    }

    /// Loads every pair's inputs and ground truth (before anything is computed, so a bad file
    /// stops the run at once).
    public static func prepare(_ pairs: [EvaluationPair], with loaded: LoadedExplainer) throws -> [PreparedPair] {
        guard !pairs.isEmpty else { throw BiLRPError.invalidArgument("no pairs to evaluate") }
        return try pairs.map { p in
            let a = try loaded.input(p.first)
            let b: PreparedInput
            var truth: Truth? = nil
            if let t = p.transform {
                guard a.tensor.shape.count == 3, a.tensor.shape[0] == 3, !p.first.lowercased().hasSuffix(".npy") else {
                    throw BiLRPError.invalidArgument("pair '\(p.name)': a transform needs an image file, not '\(p.first)'")
                }
                let (img, c) = try t.apply(a.display)
                b = PreparedInput(tensor: try loaded.preprocessing.normalize(rgb: img.planar), display: img, source: "\(p.first) (\(t))")
                truth = .correspondence(c)
            } else {
                b = try loaded.input(p.second!)
            }
            if let path = p.correspondence {
                let s = try a.tensor.shape3()
                truth = .correspondence(try Correspondence.read(path: path, width: s.width, height: s.height))
            }
            if let files = p.labels {
                let (sa, sb) = (try a.tensor.shape3(), try b.tensor.shape3())
                truth = .labels(try PatchLabels.read(path: files.first, width: sa.width, height: sa.height),
                                try PatchLabels.read(path: files.second, width: sb.width, height: sb.height))
            }
            return PreparedPair(pair: p, first: a, second: b, truth: truth)
        }
    }

    /// Runs the evaluation of `pairs` at every cut in `layers` with every rule setting in `rules`
    /// (the first setting's model, head and sizes apply to all). `progress` gets one line per pair.
    public static func run(pairs: [EvaluationPair], settings base: ExplanationSettings, layers: [LayerCut?], rules: [String],
                           options: EvaluationOptions, kernels: any Kernels = CKernelsBackend(),
                           progress: (String) -> Void = { _ in }) throws -> EvaluationReport {
        try options.validate()
        let rules = rules.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        guard !rules.isEmpty else { throw BiLRPError.invalidArgument("no rule setting to evaluate") }
        guard !layers.isEmpty else { throw BiLRPError.invalidArgument("no layer to evaluate") }
        var settingsRules = rules
        for r in rules { _ = try Composite.named(r) }
        if !settingsRules.contains("hp") { settingsRules.append("hp") }
        var prepared: [PreparedPair]? = nil
        var layerReports: [EvaluationReport.Layer] = []
        var modelName = ""
        for cut in layers {
            var loaded: [String: LoadedExplainer] = [:]
            for r in settingsRules {
                var s = base
                s.layer = cut; s.rules = r
                loaded[r] = try LoadedExplainer.load(s, kernels: kernels)
            }
            let main = loaded[rules[0]]!
            modelName = main.caption(inputs: ("", "")).model
            if prepared == nil { prepared = try prepare(pairs, with: main) }
            let layerName = main.caption(inputs: ("", "")).layer
            var reports: [EvaluationReport.Pair] = []
            for (i, p) in prepared!.enumerated() {
                let start = Date()
                reports.append(try evaluate(p, loaded: loaded, rules: rules, options: options))
                let t = Date().timeIntervalSince(start)
                reports[reports.count - 1].seconds = t
                progress(String(format: "eval: %@, pair %d/%d (%@): %.1f s", layerName, i + 1, prepared!.count, p.pair.name, t))
            }
            let marked = (reports.filter { $0.related == true }.map(\.similarity), reports.filter { $0.related == false }.map(\.similarity))
            layerReports.append(EvaluationReport.Layer(
                layer: layerName, pairs: reports, summary: summarize(reports),
                fractions: reports.lazy.compactMap { $0.orderings.first?.mostRelevantFirst?.fractions }.first ?? [],
                separation: Separation(related: marked.0, unrelated: marked.1)))
        }
        return EvaluationReport(model: modelName, size: base.size, patch: base.patch, head: base.projection ?? base.head,
                                similarity: base.similarity, rules: rules, options: options, layers: layerReports)
    }

    /// The orderings of one pair: their curves (with perturbation steps) and their scores against
    /// the ground truth (where it is known). With neither asked, only y(x, x').
    static func evaluate(_ p: PreparedPair, loaded: [String: LoadedExplainer], rules: [String],
                         options: EvaluationOptions) throws -> EvaluationReport.Pair {
        let model = loaded[rules[0]]!.explainer
        let patch = loaded[rules[0]]!.settings.patch
        func pairReport(_ y: Double, conservation: [String: Double], orderings: [EvaluationReport.Ordering]) -> EvaluationReport.Pair {
            EvaluationReport.Pair(name: p.pair.name, first: p.first.source, second: p.second.source, similarity: y, related: p.pair.related,
                                  conservation: conservation, orderings: orderings, seconds: 0)
        }
        guard options.steps > 0 || p.truth != nil else {
            let y = model.similarity.value(try model.embedding(p.first.tensor), try model.embedding(p.second.tensor))
            return pairReport(y, conservation: [:], orderings: [])
        }
        // BiLRP with each rule setting, then the products of their marginals, then HP.
        var bilrp: [PairRanking] = [], marginals: [PairRanking] = [], hp: [PairRanking] = []
        var conservation: [String: Double] = [:]
        var grids: (PatchGrid, PatchGrid)? = nil
        var y = 0.0
        for r in rules + (rules.contains("hp") ? [] : ["hp"]) {
            let e = try loaded[r]!.explainer.explain(p.first.tensor, p.second.tensor, patch: patch)
            conservation[r] = e.conservation.relativeError
            grids = (e.first.grid, e.second.grid)
            if r == rules[0] { y = Double(e.similarity) }
            if r == "hp" { hp.append(PairRanking(name: "hp", e)) } else { bilrp.append(PairRanking(name: "bilrp:\(r)", e)) }
            if rules.contains(r) { marginals.append(PairRanking.marginalProduct(name: "marginals:\(r)", e)) }
        }
        let rankings = bilrp + marginals + hp
        let (g1, g2) = grids!
        let truth = try p.truth?.patches(first: g1, second: g2, tolerance: options.tolerance ?? Double(patch) / 2)
        let randoms = (0..<options.seeds).map { PairRanking.random(rows: g1.count, columns: g2.count, seed: UInt64($0)) }
        var orderings = try rankings.map { r in
            EvaluationReport.Ordering(name: r.name, mostRelevantFirst: nil, leastRelevantFirst: nil, seedAUCs: nil,
                                      correspondence: try truth?.scores(r, k: options.topK, fraction: options.bestMatchFraction))
        }
        // Random: the mean correspondence scores over the seeds.
        var random = EvaluationReport.Ordering(name: "random", mostRelevantFirst: nil, leastRelevantFirst: nil, seedAUCs: nil,
                                               correspondence: nil)
        if let truth {
            let scores = try randoms.map { try truth.scores($0, k: options.topK, fraction: options.bestMatchFraction) }
            let n = Double(scores.count)
            var s = scores[0]
            s.precisionAtK = scores.reduce(0.0) { $0 + $1.precisionAtK } / n
            s.bestMatchAccuracy = scores.reduce(0.0) { $0 + $1.bestMatchAccuracy } / n
            random.correspondence = s
        }
        orderings.append(random)
        if options.steps > 0 {
            try addCurves(to: &orderings, rankings: rankings + randoms, p, model: model, patch: patch, grids: (g1, g2), options: options)
            // y(x, x') from the same forward passes as the curves (their first point).
            y = orderings[0].mostRelevantFirst!.similarity[0]
        }
        return pairReport(y, conservation: conservation, orderings: orderings)
    }

    /// Pair perturbation: each ranking's two curves (the last ordering, random, gets the mean
    /// curves of the random rankings that end `rankings`, and each seed's areas).
    static func addCurves(to orderings: inout [EvaluationReport.Ordering], rankings: [PairRanking], _ p: PreparedPair,
                          model: Explainer, patch: Int, grids: (PatchGrid, PatchGrid), options: EvaluationOptions) throws {
        let (g1, g2) = grids
        let flipping = try PairFlipping(steps: options.steps, baseline: options.baseline)
        let sides = (PairFlipping.Side(input: p.first.tensor, fill: try options.baseline.fill(for: p.first.tensor, patch: patch), grid: g1),
                     PairFlipping.Side(input: p.second.tensor, fill: try options.baseline.fill(for: p.second.tensor, patch: patch), grid: g2))
        // phi of the intact inputs and of the fully removed ones is the same for every curve: once.
        let allRemoved = (try PairFlipping.perturbed(sides.0, removed: [Bool](repeating: true, count: g1.count)),
                          try PairFlipping.perturbed(sides.1, removed: [Bool](repeating: true, count: g2.count)))
        let ends = try [sides.0.input, sides.1.input, allRemoved.0, allRemoved.1].map { ($0.data, try model.embedding($0)) }
        let embed: (Tensor) throws -> [Float] = { x in try ends.first { $0.0 == x.data }?.1 ?? model.embedding(x) }
        func curves(_ r: PairRanking) throws -> (PerturbationCurve, PerturbationCurve) {
            let o = r.order()
            return (try flipping.curve(order: o, first: sides.0, second: sides.1, similarity: model.similarity, embed: embed),
                    try flipping.curve(order: o.reversed(), first: sides.0, second: sides.1, similarity: model.similarity, embed: embed))
        }
        let named = orderings.count - 1
        for i in 0..<named {
            let (most, least) = try curves(rankings[i])
            orderings[i].mostRelevantFirst = most; orderings[i].leastRelevantFirst = least
        }
        var most: [PerturbationCurve] = [], least: [PerturbationCurve] = []
        for r in rankings[named...] {
            let (m, l) = try curves(r)
            most.append(m); least.append(l)
        }
        func mean(_ cs: [PerturbationCurve]) -> PerturbationCurve {
            let n = Double(cs.count)
            let values = (0..<cs[0].similarity.count).map { k in cs.reduce(0.0) { $0 + $1.similarity[k] } / n }
            return PerturbationCurve(fractions: cs[0].fractions, similarity: values)
        }
        orderings[named].mostRelevantFirst = mean(most); orderings[named].leastRelevantFirst = mean(least)
        orderings[named].seedAUCs = zip(most, least).map { [$0.auc, $1.auc] }
    }

    /// Means and spreads over the pairs, per ordering (in the order of the first pair).
    public static func summarize(_ pairs: [EvaluationReport.Pair]) -> [EvaluationReport.Summary] {
        guard let first = pairs.first(where: { !$0.orderings.isEmpty }) else { return [] }
        // Ground-truth scores compare the orderings on the same pairs: those where each has a positive pair.
        let withTruth = pairs.filter { $0.orderings.contains { $0.correspondence != nil } }
        let scored = withTruth.filter { $0.orderings.allSatisfy { ($0.correspondence?.counted ?? 1) > 0 } }
        return first.orderings.map(\.name).map { name in
            let o = pairs.compactMap { $0.orderings.first { $0.name == name } }
            let c = scored.compactMap { $0.orderings.first { $0.name == name }?.correspondence }
            // Curves come in pairs (both or neither).
            let curves = o.compactMap { o in o.mostRelevantFirst.flatMap { m in o.leastRelevantFirst.map { (m, $0) } } }
            let most = curves.map(\.0), least = curves.map(\.1)
            func curveStats(_ curves: [[Double]]) -> [EvaluationReport.Statistic] {
                let steps = curves.map(\.count).min() ?? 0
                return (0..<steps).map { k in EvaluationReport.Statistic(curves.map { $0[k] }) }
            }
            return EvaluationReport.Summary(
                name: name, mostRelevantFirstAUC: .init(most.map(\.auc)),
                leastRelevantFirstAUC: .init(least.map(\.auc)),
                gap: .init(zip(least, most).map { $0.auc - $1.auc }),
                precisionAtK: c.isEmpty ? nil : .init(c.map(\.precisionAtK)),
                bestMatchAccuracy: c.isEmpty ? nil : .init(c.map(\.bestMatchAccuracy)),
                chance: c.isEmpty ? nil : .init(c.map(\.chance)), unscored: withTruth.count - scored.count,
                mostRelevantFirst: curveStats(most.map(\.normalized)),
                leastRelevantFirst: curveStats(least.map(\.normalized)))
        }
    }
}
