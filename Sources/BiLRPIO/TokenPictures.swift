import BiLRP
import Foundation

/// One text as the token pictures show it: a label per token (the original text it covers, or
/// the special token's name) and whether it continues the word before it (a "##" word piece,
/// drawn without a gap).
public struct TokenLine: Sendable {
    public var labels: [String]
    public var continues: [Bool]
    public init(labels: [String], continues: [Bool]) {
        self.labels = labels; self.continues = continues
    }
}

/// A text pair explanation as the token pictures need it: R (T1 x T2, row-major) and the two texts.
public struct TokenPairFigure: Sendable {
    public var relevance: [Float]
    public var first: TokenLine
    public var second: TokenLine
    public var similarity: Float
    public var relevanceSum: Float
    /// The setup line of the legend (model, rules, similarity).
    public var setup: String
    public init(relevance: [Float], first: TokenLine, second: TokenLine, similarity: Float, relevanceSum: Float, setup: String) {
        self.relevance = relevance; self.first = first; self.second = second
        self.similarity = similarity; self.relevanceSum = relevanceSum; self.setup = setup
    }
    var rows: Int { first.labels.count }
    var columns: Int { second.labels.count }
}

extension Canvas {
    /// Text read from bottom to top, its first letter at the bottom end (x: the left edge of the
    /// rotated line, `bottom` where the text starts).
    mutating func verticalText(_ text: String, x: Int, bottom: Int, size: Int, color: RGB, font: Typeface?) {
        guard let font else { return }
        let w = font.width(text, size: size) + 2, h = size + size / 2
        var flat = Canvas(width: w, height: h, background: (0, 0, 0))
        flat.text(text, x: 1, baseline: size, size: size, color: (1, 1, 1), font: font)
        for ty in 0..<h {
            for tx in 0..<w {
                let a = flat.rgb[(ty * w + tx) * 3]
                let cx = x + ty, cy = bottom - tx
                if a > 0, cx >= 0, cx < width, cy >= 0, cy < height { blend(cx, cy, color, a) }
            }
        }
    }
}

extension Pictures {
    /// R over token pairs as a T1 x T2 diverging heatmap, the first text's tokens down the left,
    /// the second's along the top (read upwards), with a colour bar; the scale is the pair
    /// pictures': R / (mean R^4)^(1/4) clipped at t2.
    public static func tokenMatrixPicture(_ f: TokenPairFigure, style: PairPictureStyle = PairPictureStyle()) throws -> Data {
        let P = f.rows, Q = f.columns
        let font = Self.font(style)
        let size = 14
        let cell = style.scale > 0 ? style.scale : max(size + 6, min(36, 720 / max(P, Q)))
        let maxAbs = f.relevance.map(abs).max() ?? 0
        let scaleValue = min(maxAbs, fourthMomentNorm(f.relevance) * style.clip)
        let clipped = maxAbs > scaleValue
        let left = (f.first.labels.map { measure(font, $0, size: size) }.max() ?? 0) + 12
        let top = (f.second.labels.map { measure(font, $0, size: size) }.max() ?? 0) + 12
        let labels = [(clipped ? "≥ " : "") + String(format: "%+.3g", scaleValue), "0",
                      (clipped ? "≤ " : "") + String(format: "%+.3g", -scaleValue)]
        let barX = left + Q * cell + 16, barWidth = 18
        let width = max(480, barX + barWidth + 8 + labels.map { measure(font, $0, size: size) }.max()! + 4)
        let legend: [LegendLine] = [
            .text([f.setup]),
            .text(["R[i, j]: token i of the first text (rows) with token j of the second (columns)",
                   String(format: "y = %.4g, sum of R = %.4g", f.similarity, f.relevanceSum)]),
        ]
        let bottom = top + P * cell
        let legendHeight = style.legend && font != nil ? legendStripHeight(legend, width: width, font: font) : 0
        let legendTop = bottom + 12
        var canvas = Canvas(width: width, height: legendTop + legendHeight)
        for i in 0..<P {
            for j in 0..<Q {
                let v = scaleValue > 0 ? f.relevance[i * Q + j] / scaleValue : 0
                canvas.fill(x0: left + j * cell, y0: top + i * cell, x1: left + (j + 1) * cell, y1: top + (i + 1) * cell, color: diverging(v))
            }
        }
        let grey: RGB = (0.85, 0.85, 0.85)
        for i in 1..<max(P, 1) { canvas.fill(x0: left, y0: top + i * cell, x1: left + Q * cell, y1: top + i * cell + 1, color: grey, alpha: 0.6) }
        for j in 1..<max(Q, 1) { canvas.fill(x0: left + j * cell, y0: top, x1: left + j * cell + 1, y1: bottom, color: grey, alpha: 0.6) }
        for (i, label) in f.first.labels.enumerated() {
            canvas.text(label, x: left - 6, baseline: top + i * cell + (cell + size) / 2 - 2, size: size, color: ink, anchor: 1, font: font)
        }
        for (j, label) in f.second.labels.enumerated() {
            canvas.verticalText(label, x: left + j * cell + (cell - size - size / 2) / 2, bottom: top - 6, size: size, color: ink, font: font)
        }
        canvas.outline(x0: left - 1, y0: top - 1, x1: left + Q * cell + 1, y1: bottom + 1, color: ink)
        drawColorBar(&canvas, x: barX, width: barWidth, top: top, bottom: bottom, labels: labels, size: size, font: font, color: diverging)
        if legendHeight > 0 { drawLegend(&canvas, legend, top: legendTop, font: font) }
        return try canvas.pngData()
    }

    /// The two texts as lines of tokens, one above the other, each token tinted by its marginal
    /// (row or column sum of R), and curves joining the token pairs that make the texts similar
    /// (red) or dissimilar (blue), wider and more opaque the larger |R| / max |R| (pairs under 5 %
    /// of the largest left out).
    public static func tokenPairPicture(_ f: TokenPairFigure, style: PairPictureStyle = PairPictureStyle()) throws -> Data {
        let font = Self.font(style)
        let size = 18, pad = 4, gap = size / 2, lineHeight = size + 2 * pad + 10
        let width = 960, margin = 16
        let Q = f.columns
        var rowSums = [Float](repeating: 0, count: f.rows), columnSums = [Float](repeating: 0, count: Q)
        for i in 0..<f.rows { for j in 0..<Q { rowSums[i] += f.relevance[i * Q + j]; columnSums[j] += f.relevance[i * Q + j] } }
        let marginScale = max((rowSums + columnSums).map(abs).max() ?? 0, 1e-30)
        /// Token boxes laid out in lines from `top`: (x0, y0, x1, y1) each, and the bottom.
        func layout(_ line: TokenLine, top: Int) -> ([(Int, Int, Int, Int)], Int) {
            var boxes: [(Int, Int, Int, Int)] = []
            var x = margin, y = top
            for (k, label) in line.labels.enumerated() {
                let w = measure(font, label, size: size) + 2 * pad
                if k > 0 && !line.continues[k] { x += gap }
                if x + w > width - margin && x > margin { x = margin; y += lineHeight }
                boxes.append((x, y, x + w, y + size + 2 * pad))
                x += w
            }
            return (boxes, y + size + 2 * pad)
        }
        let titleHeight = size + 10
        let (firstBoxes, firstBottom) = layout(f.first, top: titleHeight + 4)
        let band = 170
        let (secondBoxes, secondBottom) = layout(f.second, top: firstBottom + band + titleHeight)
        let legend: [LegendLine] = [
            .text([f.setup]),
            .keys([(red, "the pair makes the texts similar"), (blue, "dissimilar")], "width and opacity: |R| / max |R| (from 5 %)"),
            .text(["token tint: its row (column) sum of R, the first-order relevance",
                   String(format: "y = %.4g, sum of R = %.4g", f.similarity, f.relevanceSum)]),
        ]
        let legendHeight = style.legend && font != nil ? legendStripHeight(legend, width: width, font: font) : 0
        let legendTop = secondBottom + 16
        var canvas = Canvas(width: width, height: legendTop + legendHeight)
        canvas.text("first text", x: margin, baseline: size + 2, size: size - 2, color: (0.4, 0.4, 0.4), font: font)
        canvas.text("second text", x: margin, baseline: firstBottom + band + size + 2, size: size - 2, color: (0.4, 0.4, 0.4), font: font)
        func drawTokens(_ line: TokenLine, _ boxes: [(Int, Int, Int, Int)], _ sums: [Float]) {
            for (k, b) in boxes.enumerated() {
                canvas.fill(x0: b.0, y0: b.1, x1: b.2, y1: b.3, color: diverging(sums[k] / marginScale), alpha: 0.9)
                canvas.outline(x0: b.0, y0: b.1, x1: b.2, y1: b.3, color: (0.75, 0.75, 0.75))
                canvas.text(line.labels[k], x: b.0 + pad, baseline: b.3 - pad - size / 5, size: size, color: ink, font: font)
            }
        }
        drawTokens(f.first, firstBoxes, rowSums)
        drawTokens(f.second, secondBoxes, columnSums)
        // A text pair has tens to hundreds of token pairs, not the images' hundreds of thousands:
        // the strength is |R| / max |R| (the image pictures' fourth-moment scale left all but the top
        // pair nearly invisible), pairs under 5 % of the largest are not drawn, the weakest first.
        let top = max(f.relevance.map(abs).max() ?? 0, 1e-30)
        let pairs = f.relevance.enumerated().map { ($0.offset, $0.element / top) }.filter { abs($0.1) >= 0.05 }
        for (idx, o) in pairs.sorted(by: { abs($0.1) < abs($1.1) }) {
            let a = firstBoxes[idx / Q], b = secondBoxes[idx % Q]
            let p0 = (Double(a.0 + a.2) / 2, Double(a.3)), p2 = (Double(b.0 + b.2) / 2, Double(b.1))
            let mid = ((p0.0 + p2.0) / 2, (p0.1 + p2.1) / 2)
            let strength = min(1, abs(o))
            canvas.strokeCurve(p0, mid, p2, color: o > 0 ? red : blue, alpha: strength,
                               lineWidth: style.lineWidth * Double(0.25 + 0.75 * strength.squareRoot()))
        }
        if legendHeight > 0 { drawLegend(&canvas, legend, top: legendTop, font: font) }
        return try canvas.pngData()
    }
}
