import BiLRP
import BiLRPIO
import Foundation
import Testing

/// A real explanation of two colourful random images on the small network, and the images.
func pictureFixture(patch: Int = 4) throws -> (PairExplanation, RGBImage, RGBImage) {
    let ex = try Explainer(model: try smallNet(seed: 5, bias: false), head: .randomProjection(outputs: 6, seed: 2),
                           composite: .preset("paper-vgg"), bounds: bounds)
    func photo(_ seed: UInt64) throws -> RGBImage {
        try RGBImage(width: 32, height: 32, pixels: random(32 * 32 * 3, seed: seed).map { 0.5 + 0.5 * max(-1, min(1, $0)) })
    }
    let a = try photo(21), b = try photo(22)
    let pre = Preprocessing.torchvision
    let pair = try ex.explain(try pre.normalize(rgb: a.planar), try pre.normalize(rgb: b.planar), patch: patch)
    return (pair, a, b)
}

func isRed(_ c: RGB) -> Bool { c.0 > c.1 + 0.3 && c.0 > c.2 + 0.3 }
func isBlue(_ c: RGB) -> Bool { c.2 > c.0 + 0.3 && c.2 > c.1 + 0.1 }
func spread(_ c: RGB) -> Float { max(c.0, c.1, c.2) - min(c.0, c.1, c.2) }

/// The standard font must be there: `make setup` installs it (fonts-dejavu-core).
func requireFont() throws -> Typeface {
    do { return try Typeface.standard() } catch {
        Issue.record("\(error)")
        throw error
    }
}

@Suite("Pictures")
struct PictureTests {
    @Test("grey background: every image pixel has equal channels (spread <= 1e-6); with color, the photos keep their colour")
    func greyBackground() throws {
        let (pair, a, b) = try pictureFixture()
        var style = PairPictureStyle()
        style.maxPairs = 0; style.boxes = 0; style.font = try requireFont()
        let grey = try Pictures.pairCanvas(pair, a, b, style: style)
        var worst: Float = 0
        for y in 0..<grey.layout.imagesHeight { for x in 0..<grey.canvas.width { worst = max(worst, spread(grey.canvas.pixel(x, y))) } }
        #expect(worst <= 1e-6, "largest channel spread on the images: \(worst)")
        style.background = .color
        let color = try Pictures.pairCanvas(pair, a, b, style: style)
        var most: Float = 0
        for y in 0..<color.layout.imagesHeight { for x in 0..<color.canvas.width { most = max(most, spread(color.canvas.pixel(x, y))) } }
        #expect(most > 0.3, "the colour background keeps the photos' colour (largest spread \(most))")
    }

    @Test("the strongest pair's curve runs through both patch centres and its midpoint in its colour, over grey")
    func strongestCurve() throws {
        let (pair, a, b) = try pictureFixture()
        var style = PairPictureStyle()
        // No soft threshold and a clip at (mean R^4)^(1/4), which the largest |R| always reaches:
        // the strongest pair is drawn at full strength.
        style.maxPairs = 1; style.boxes = 0; style.softThreshold = 0; style.clip = 1; style.font = try requireFont()
        let opacities = Pictures.pairOpacities(pair.relevance, style: style)
        let strongest = try #require(opacities.max { abs(pair.relevance[$0.0]) < abs(pair.relevance[$1.0]) })
        #expect(abs(strongest.1) == 1)
        let picture = try Pictures.pairCanvas(pair, a, b, style: style)
        let q = pair.columns
        let p0 = picture.layout.center(pair.first.grid.rectangle(strongest.0 / q), second: false)
        let p2 = picture.layout.center(pair.second.grid.rectangle(strongest.0 % q), second: true)
        // The drawn curve bends up by a tenth of the distance: its point at t = 1/2.
        let lift = 0.1 * hypot(p2.0 - p0.0, p2.1 - p0.1)
        let mid = ((p0.0 + p2.0) / 2, (p0.1 + p2.1) / 2 - lift / 2)
        let positive = pair.relevance[strongest.0] > 0
        for (x, y) in [p0, mid, p2] {
            let c = picture.canvas.pixel(Int(x), Int(y))
            #expect(positive ? isRed(c) : isBlue(c), "pixel (\(Int(x)), \(Int(y))) is \(c), R = \(pair.relevance[strongest.0])")
        }
        // Off the curve (a quarter of the way down the gap between the images) the picture stays grey.
        let gapX = picture.layout.secondX - style.gap / 2
        #expect(spread(picture.canvas.pixel(gapX, picture.layout.imagesHeight - 2)) <= 1e-6)
    }

    @Test("matched regions: pairs touching a group on both inputs join it, grown groups merge, signs stay apart, the cap keeps the strongest")
    func matchedRegions() throws {
        let g = PatchGrid(height: 32, width: 32, patch: 8)  // 4 x 4 patches
        var R = [Float](repeating: 0, count: 256)
        func set(_ p: (Int, Int), _ q: (Int, Int), _ v: Float) { R[(p.0 * 4 + p.1) * 16 + q.0 * 4 + q.1] = v }
        set((0, 0), (0, 0), 10)   // opens A
        set((0, 2), (0, 2), 9)    // two columns from A on both sides: opens B
        set((0, 1), (0, 1), 8)    // touches A: A grows to columns 0-1 and now touches B; they merge
        set((0, 1), (0, 0), -7)   // touches A but negative: its own group
        set((3, 3), (3, 0), 6)    // far from everything
        let style = PairPictureStyle()
        let (regions, share) = Pictures.matchedRegions(R, first: g, second: g, style: style)
        #expect(regions.map(\.relevance) == [27, -7, 6] && regions.map(\.pairs) == [3, 1, 1])
        #expect(regions[0].first == (0, 0, 0, 2) && regions[0].second == (0, 0, 0, 2))
        #expect(regions[2].first == (3, 3, 3, 3) && regions[2].second == (3, 0, 3, 0))
        #expect(share == 1)
        var capped = style
        capped.maxRegions = 2
        let (two, part) = Pictures.matchedRegions(R, first: g, second: g, style: capped)
        #expect(two.map(\.relevance) == [27, -7] && part == 27.0 / 33)
        // Drawn: each region's boxes outlined in its colour on the canvas.
        let (pair, a, b) = try pictureFixture()
        var drawn = PairPictureStyle()
        drawn.grouping = .regions; drawn.legend = false
        let picture = try Pictures.pairCanvas(pair, a, b, style: drawn)
        let top = try #require(Pictures.matchedRegions(pair.relevance, first: pair.first.grid, second: pair.second.grid, style: drawn)
            .regions.first { $0.relevance > 0 })
        let s = picture.layout.scale, patch = pair.first.grid.patch
        // The top-left corner pixel of the strongest positive region's first box is red.
        #expect(isRed(picture.canvas.pixel(top.first.1 * patch * s, top.first.0 * patch * s + 1)))
        #expect(isRed(picture.canvas.pixel(picture.layout.secondX + top.second.1 * patch * s, top.second.0 * patch * s + 1)))
    }

    @Test("the top pairs' patches are outlined on both images, in dark red")
    func boxes() throws {
        let (pair, a, b) = try pictureFixture()
        var style = PairPictureStyle()
        style.maxPairs = 0; style.boxes = 1; style.font = try requireFont()
        let picture = try Pictures.pairCanvas(pair, a, b, style: style)
        let top = try #require(pair.topPositive(1).first)
        let s = picture.layout.scale
        for (r, x0) in [(top.first, 0), (top.second, picture.layout.secondX)] {
            // The middle of the outline's bottom edge, and the patch's centre (not outlined: grey).
            let c = picture.canvas.pixel(x0 + (r.x0 + r.x1) * s / 2, r.y1 * s - 1)
            #expect(c.0 > 0.45 && c.1 < 0.1 && c.2 < 0.1, "\(c)")
            let centre = picture.canvas.pixel(x0 + (r.x0 + r.x1) * s / 2, (r.y0 + r.y1) * s / 2)
            #expect(spread(centre) <= 1e-6)
        }
    }

    @Test("the legend strip: under the images, white, with dark text and both colour keys; absent with --no-legend")
    func legend() throws {
        let (pair, a, b) = try pictureFixture()
        var style = PairPictureStyle()
        style.font = try requireFont()
        let caption = PictureCaption(model: "net.onnx", layer: "layer 9", head: "random:6:2", rules: "paper-vgg",
                                     similarity: "dot", inputs: ("a.png", "b.png"))
        let picture = try Pictures.pairCanvas(pair, a, b, style: style, caption: caption)
        let l = picture.layout
        #expect(l.legendTop >= l.imagesHeight && picture.canvas.height - l.legendTop >= 3 * 12, "three lines of text at least")
        var dark = 0, red = 0, blue = 0, white = 0, total = 0
        for y in l.legendTop..<picture.canvas.height {
            for x in 0..<picture.canvas.width {
                let c = picture.canvas.pixel(x, y)
                total += 1
                if max(c.0, c.1, c.2) < 0.35 { dark += 1 }
                if isRed(c) { red += 1 }
                if isBlue(c) { blue += 1 }
                if min(c.0, c.1, c.2) > 0.99 { white += 1 }
            }
        }
        #expect(dark > 500, "text pixels: \(dark)")
        #expect(red > 20 && blue > 20, "colour keys: \(red) red, \(blue) blue pixels")
        #expect(Double(white) > 0.7 * Double(total), "mostly white background")
        // The text is what it says: a caption line is as wide as the font measures it.
        #expect(style.font!.width("net.onnx", size: 14) > 40)
        style.legend = false
        let bare = try Pictures.pairCanvas(pair, a, b, style: style, caption: caption)
        #expect(bare.canvas.height == bare.layout.imagesHeight)
    }

    @Test("readable at 128 x 128 inputs (scaled to at least 384 pixels) and at 448 x 448 (not scaled)")
    func scale() throws {
        let (pair, _, _) = try pictureFixture()
        var style = PairPictureStyle()
        style.legend = false
        for (side, expected) in [(128, 3), (448, 1), (32, 12)] {
            let img = try RGBImage(width: side, height: side, pixels: [Float](repeating: 0.5, count: side * side * 3))
            let p = try Pictures.pairCanvas(pair, img, img, style: style)
            #expect(p.layout.scale == expected)
            #expect(p.canvas.width == 2 * side * expected + style.gap)
        }
    }

    @Test("heatmap overlay: one symmetric scale over both images: +max full red, -max full blue, half values half strength, zero untouched")
    func overlaySymmetric() throws {
        let grid = PatchGrid(height: 8, width: 8, patch: 4)
        let img = try RGBImage(width: 8, height: 8, pixels: [Float](repeating: 0.5, count: 8 * 8 * 3))
        var style = PairPictureStyle()
        style.font = try requireFont(); style.scale = 4
        // The second image's largest |value| (2) sets the scale for both.
        let picture = try Pictures.overlayCanvas([(img, grid, [1, -1, 0.5, 0]), (img, grid, [-2, 2, 0, 0])], style: style, note: "test")
        let base = Pictures.backdrop(img, .grey).pixels[0]
        func patchColor(_ item: Int, _ p: Int) -> RGB {
            let r = grid.rectangle(p), x0 = item == 0 ? 0 : picture.layout.secondX
            return picture.canvas.pixel(x0 + (r.x0 + r.x1) * 2, (r.y0 + r.y1) * 2)
        }
        func same(_ a: RGB, _ b: RGB) -> Bool { abs(a.0 - b.0) + abs(a.1 - b.1) + abs(a.2 - b.2) < 1e-5 }
        let g: RGB = (base, base, base)
        #expect(same(patchColor(1, 1), Pictures.overlayColor(1, over: g)))
        #expect(same(patchColor(1, 0), Pictures.overlayColor(-1, over: g)))
        #expect(same(patchColor(0, 0), Pictures.overlayColor(0.5, over: g)))
        #expect(same(patchColor(0, 1), Pictures.overlayColor(-0.5, over: g)))
        #expect(same(patchColor(0, 3), g))
        // Symmetric: +t and -t move the backdrop by the same fraction towards their colours.
        for t: Float in [0.25, 0.5, 1] {
            let up = Pictures.overlayColor(t, over: g), down = Pictures.overlayColor(-t, over: g)
            let fUp = (up.0 - base) / (Pictures.red.0 - base), fDown = (down.2 - base) / (Pictures.blue.2 - base)
            #expect(abs(fUp - fDown) < 1e-6 && abs(fUp - 0.85 * t) < 1e-6)
        }
        // The colour bar: full red at its top, full blue at its bottom.
        let barX = picture.layout.secondX + 8 * 4 + style.gap + 9
        let size = Pictures.textSize(canvasWidth: 2 * 8 * 4)
        #expect(isRed(picture.canvas.pixel(barX, size + 1)) && isBlue(picture.canvas.pixel(barX, picture.layout.imagesHeight - size - 2)))
    }

    @Test("pair matrix: cell (p, q) is R[p, q] on the diverging scale of the pair picture (clip t2), in row-major patch order")
    func matrix() throws {
        let (pair, _, _) = try pictureFixture(patch: 8)
        var style = PairPictureStyle()
        style.font = try requireFont()
        let picture = try Pictures.matrixCanvas(pair, style: style)
        let cell = picture.layout.scale, left = picture.layout.secondX
        let top = picture.layout.imagesHeight - pair.rows * cell
        let m4 = pair.relevance.reduce(0.0) { $0 + pow(Double($1), 4) } / Double(pair.relevance.count)
        let scaleValue = min(Double(pair.relevance.map(abs).max()!), pow(m4, 0.25) * Double(style.clip))
        var checked = 0
        for p in 0..<pair.rows {
            for q in 0..<pair.columns {
                // A pixel inside the cell, clear of the patch-row lines (drawn on a cell's first row and column).
                let c = picture.canvas.pixel(left + q * cell + cell / 2, top + p * cell + cell / 2)
                let e = Pictures.diverging(Float(Double(pair.relevance[p * pair.columns + q]) / scaleValue))
                #expect(abs(c.0 - e.0) + abs(c.1 - e.1) + abs(c.2 - e.2) < 1e-5, "cell (\(p), \(q))")
                checked += 1
            }
        }
        #expect(checked == pair.relevance.count)
    }

    @Test("the PNG holds the canvas: same size, every pixel within 8-bit rounding")
    func png() throws {
        let (pair, a, b) = try pictureFixture()
        var style = PairPictureStyle()
        style.font = try requireFont()
        let picture = try Pictures.pairCanvas(pair, a, b, style: style)
        let decoded = try RGBImage.decode(try picture.pngData())
        #expect(decoded.width == picture.canvas.width && decoded.height == picture.canvas.height)
        var worst: Float = 0
        for y in 0..<decoded.height {
            for x in 0..<decoded.width {
                let c = picture.canvas.pixel(x, y), d = (y * decoded.width + x) * 3
                worst = max(worst, abs(decoded.pixels[d] - c.0), abs(decoded.pixels[d + 1] - c.1), abs(decoded.pixels[d + 2] - c.2))
            }
        }
        #expect(worst <= 0.5 / 255 + 1e-6)
    }

    @Test("number labels of regions sharing a box corner go side by side, never on top of each other")
    func labelSlots() {
        var placed: [(Int, Int, Int, Int)] = []
        for _ in 0..<3 { placed.append(Pictures.labelSlot((10, 5, 24, 20), avoiding: placed)) }
        #expect(placed.map(\.0) == [10, 25, 40] && placed.allSatisfy { $0.1 == 5 && $0.2 - $0.0 == 14 && $0.3 == 20 })
        // A label that overlaps none stays where it is, also when it only touches one.
        #expect(Pictures.labelSlot((54, 5, 60, 20), avoiding: placed) == (54, 5, 60, 20))
        #expect(Pictures.labelSlot((0, 21, 30, 30), avoiding: placed) == (0, 21, 30, 30))
        // One that overlaps the middle label moves past it and then past the third.
        #expect(Pictures.labelSlot((30, 10, 36, 18), avoiding: placed) == (55, 10, 61, 18))
    }
}
