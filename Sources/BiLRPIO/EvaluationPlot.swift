import BiLRP
import Foundation

/// The perturbation curves of an evaluation, median and quartiles over the pairs: per layer a
/// row of two panels (most relevant pairs first, least relevant first), y / y(x, x') against the
/// fraction of patches removed.
public enum EvaluationPlot {
    static let panelWidth = 420, panelHeight = 260
    static let margin = (left: 56, right: 16, top: 52, bottom: 44)

    /// A colour per ordering: BiLRP red, its marginals orange, HP blue, random grey; further rule
    /// settings purple and green.
    static func color(_ name: String, rules: [String]) -> RGB {
        if name == "hp" { return (0.12, 0.42, 0.75) }
        let rule = name.split(separator: ":", maxSplits: 1).last.map(String.init) ?? name
        let index = rules.firstIndex(of: rule) ?? 0
        if name == "random" { return (0.45, 0.45, 0.45) }
        let bilrp: [RGB] = [(0.84, 0.13, 0.14), (0.55, 0.25, 0.7), (0.1, 0.6, 0.3)]
        let marginal: [RGB] = [(0.98, 0.55, 0.05), (0.8, 0.5, 0.85), (0.5, 0.8, 0.4)]
        return name.hasPrefix("marginals:") ? marginal[index % 3] : bilrp[index % 3]
    }

    public static func png(_ report: EvaluationReport, font: Typeface?) throws -> Data {
        try canvas(report, font: font).pngData()
    }

    public static func canvas(_ report: EvaluationReport, font: Typeface?) -> Canvas {
        let names = report.layers.first?.summary.map(\.name) ?? []
        let legendHeight = 52
        let cellW = margin.left + panelWidth + margin.right, cellH = margin.top + panelHeight + margin.bottom
        var canvas = Canvas(width: 2 * cellW, height: report.layers.count * cellH + legendHeight + 8)
        for (row, layer) in report.layers.enumerated() {
            let x = layer.fractions
            for (col, most) in [true, false].enumerated() {
                let ox = col * cellW + margin.left, oy = row * cellH + margin.top
                // Per ordering: the median curve over the pairs and its quartiles.
                let series = layer.summary.map { s in
                    let stats = most ? s.mostRelevantFirst : s.leastRelevantFirst
                    return (s.name, stats.map(\.median), stats.map(\.q1), stats.map(\.q3))
                }
                let values = series.flatMap { $0.2 + $0.3 }.filter(\.isFinite)
                let lo = min(0, (values.min() ?? 0)), hi = max(1.05, (values.max() ?? 1))
                func px(_ f: Double) -> Double { Double(ox) + f * Double(panelWidth) }
                func py(_ v: Double) -> Double { Double(oy) + (hi - v) / (hi - lo) * Double(panelHeight) }
                // Frame, the y = 0 and y = 1 lines, ticks.
                canvas.outline(x0: ox - 1, y0: oy - 1, x1: ox + panelWidth + 1, y1: oy + panelHeight + 1, color: (0.3, 0.3, 0.3))
                for v in [0.0, 1.0] {
                    canvas.fill(x0: ox, y0: Int(py(v)), x1: ox + panelWidth, y1: Int(py(v)) + 1, color: (0.75, 0.75, 0.75))
                }
                let size = 13
                for t in stride(from: 0.0, through: 1.0, by: 0.25) {
                    canvas.fill(x0: Int(px(t)), y0: oy + panelHeight, x1: Int(px(t)) + 1, y1: oy + panelHeight + 5, color: (0.3, 0.3, 0.3))
                    canvas.text(String(format: "%g", t), x: Int(px(t)), baseline: oy + panelHeight + 18, size: size, anchor: 0.5, font: font)
                }
                for v in yTicks(lo, hi) {
                    canvas.fill(x0: ox - 5, y0: Int(py(v)), x1: ox, y1: Int(py(v)) + 1, color: (0.3, 0.3, 0.3))
                    canvas.text(String(format: "%g", v), x: ox - 8, baseline: Int(py(v)) + 5, size: size, anchor: 1, font: font)
                }
                canvas.text("fraction of patches removed", x: ox + panelWidth / 2, baseline: oy + panelHeight + 36, size: size,
                            anchor: 0.5, font: font)
                canvas.text("y / y(x, x')", x: ox - margin.left + 4, baseline: oy - 8, size: size, font: font)
                let title = "\(layer.layer): \(most ? "most relevant pairs first (lower is better)" : "least relevant first (higher is better)")"
                canvas.text(title, x: ox + panelWidth / 2, baseline: oy - 30, size: 14, anchor: 0.5, font: font)
                guard x.count > 1 else { continue }
                // Spread first (the quartiles over the pairs), then the median lines.
                for s in series {
                    let c = color(s.0, rules: report.rules)
                    for col in Int(px(0))..<Int(px(1)) {
                        let f = (Double(col) + 0.5 - Double(ox)) / Double(panelWidth)
                        let (lower, upper) = (interpolate(x, s.2, f), interpolate(x, s.3, f))
                        guard lower.isFinite, upper.isFinite, upper > lower else { continue }
                        canvas.fill(x0: col, y0: Int(py(upper)), x1: col + 1, y1: Int(py(lower)) + 1, color: c, alpha: 0.12)
                    }
                }
                for s in series {
                    let c = color(s.0, rules: report.rules)
                    for k in 1..<min(x.count, s.1.count) where s.1[k].isFinite && s.1[k - 1].isFinite {
                        let a = (px(x[k - 1]), py(s.1[k - 1])), b = (px(x[k]), py(s.1[k]))
                        canvas.strokeCurve(a, ((a.0 + b.0) / 2, (a.1 + b.1) / 2), b, color: c, alpha: 1, lineWidth: 2.5)
                    }
                }
            }
        }
        // The legend: a swatch and a name per ordering.
        var lx = margin.left
        let ly = report.layers.count * cellH + 18
        for n in names {
            let c = color(n, rules: report.rules)
            canvas.fill(x0: lx, y0: ly - 6, x1: lx + 22, y1: ly - 2, color: c)
            lx += 28
            lx += canvas.text(label(n), x: lx, baseline: ly, size: 14, font: font) + 24
        }
        let pairs = report.layers.first?.pairs.count ?? 0
        canvas.text("lines: the median over the \(pairs) pairs; bands: first to third quartile; y(x, x') is the pair's similarity",
                    x: margin.left, baseline: ly + 22, size: 13, color: (0.35, 0.35, 0.35), font: font)
        return canvas
    }

    static func label(_ name: String) -> String {
        if name == "hp" { return "HP (Hessian x product)" }
        if name == "random" { return "random" }
        if name.hasPrefix("bilrp:") { return "BiLRP (\(name.dropFirst(6)))" }
        if name.hasPrefix("marginals:") { return "marginals r r'ᵀ (\(name.dropFirst(10)))" }
        return name
    }

    static func yTicks(_ lo: Double, _ hi: Double) -> [Double] {
        let span = hi - lo
        let step = span <= 1.6 ? 0.25 : span <= 4 ? 0.5 : span <= 8 ? 1 : (span / 5).rounded(.up)
        return stride(from: (lo / step).rounded(.up) * step, through: hi, by: step).map { $0 }
    }

    static func interpolate(_ x: [Double], _ y: [Double], _ f: Double) -> Double {
        let n = min(x.count, y.count)
        guard n > 1 else { return .nan }
        var k = 1
        while k < n - 1 && x[k] < f { k += 1 }
        let t = x[k] > x[k - 1] ? (f - x[k - 1]) / (x[k] - x[k - 1]) : 0
        return y[k - 1] + max(0, min(1, t)) * (y[k] - y[k - 1])
    }
}
