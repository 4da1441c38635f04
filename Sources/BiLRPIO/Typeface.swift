import BiLRP
import CFreeType
import Foundation

/// A TrueType font rendered with FreeType, for the text of the pictures (legends, colour bars, axes).
/// Glyphs are rendered once per size and kept; a lock makes one face safe to share between the
/// server's requests (FreeType faces are not thread-safe).
public final class Typeface: @unchecked Sendable {
    /// One rendered glyph: 8-bit coverage, its offset from the pen position, and the advance.
    struct Glyph {
        var coverage: [UInt8]
        var width: Int, rows: Int, left: Int, top: Int, advance: Int
    }

    /// Where fonts are looked for when no path is given: DejaVu Sans (Debian: fonts-dejavu-core),
    /// then common Linux and macOS sans-serif fonts.
    public static let searchPaths = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
        "/Library/Fonts/Arial.ttf",
    ]

    public let path: String
    private var library: FT_Library?
    private var face: FT_Face?
    private var glyphs: [Int: Glyph] = [:]  // key: size << 21 | code point
    private let lock = NSLock()

    /// Loads the font at `path` (TrueType or OpenType).
    public init(path: String) throws {
        self.path = path
        guard FT_Init_FreeType(&library) == 0, let library else {
            throw BiLRPError.invalidArgument("FreeType could not be initialized")
        }
        guard FT_New_Face(library, path, 0, &face) == 0, face != nil else {
            FT_Done_FreeType(library)
            self.library = nil
            throw BiLRPError.invalidArgument("cannot load the font '\(path)' (expected a TrueType or OpenType file)")
        }
    }

    deinit {
        if let face { FT_Done_Face(face) }
        if let library { FT_Done_FreeType(library) }
    }

    /// The first font of `searchPaths` that loads, once per process.
    public static func standard() throws -> Typeface {
        try standardFont.get()
    }

    private static let standardFont: Result<Typeface, any Error> = {
        for p in searchPaths where FileManager.default.fileExists(atPath: p) {
            if let t = try? Typeface(path: p) { return .success(t) }
        }
        return .failure(BiLRPError.invalidArgument(
            "no font for the pictures' text: install DejaVu Sans (Debian: apt install fonts-dejavu-core) or give a TrueType file with --font"))
    }()

    /// Width in pixels of `text` at `size`.
    public func width(_ text: String, size: Int) -> Int {
        text.unicodeScalars.reduce(0) { $0 + glyph($1, size: size).advance }
    }

    func glyph(_ c: Unicode.Scalar, size: Int) -> Glyph {
        let key = size << 21 | Int(c.value)
        lock.lock(); defer { lock.unlock() }
        if let g = glyphs[key] { return g }
        var g = Glyph(coverage: [], width: 0, rows: 0, left: 0, top: 0, advance: size / 2)
        if let face, FT_Set_Pixel_Sizes(face, 0, FT_UInt(size)) == 0,
           FT_Load_Char(face, FT_ULong(c.value), Int32(FT_LOAD_RENDER)) == 0, let slot = face.pointee.glyph {
            let b = slot.pointee.bitmap
            let w = Int(b.width), h = Int(b.rows), pitch = Int(b.pitch)
            var cov = [UInt8](repeating: 0, count: w * h)
            if let buf = b.buffer, b.pixel_mode == UInt8(FT_PIXEL_MODE_GRAY.rawValue) {
                for y in 0..<h { for x in 0..<w { cov[y * w + x] = buf[y * pitch + x] } }
            }
            g = Glyph(coverage: cov, width: w, rows: h, left: Int(slot.pointee.bitmap_left),
                      top: Int(slot.pointee.bitmap_top), advance: Int(slot.pointee.advance.x + 32) >> 6)
        }
        glyphs[key] = g
        return g
    }
}

extension Canvas {
    /// Draws `text` with its baseline at y and its left end at x (anchor 0), centre (0.5) or right
    /// end (1); returns the width drawn (nothing without a font).
    @discardableResult
    public mutating func text(_ text: String, x: Int, baseline y: Int, size: Int, color: (Float, Float, Float) = (0.1, 0.1, 0.1),
                              anchor: Double = 0, font: Typeface?) -> Int {
        guard let font else { return 0 }
        let w = font.width(text, size: size)
        var pen = x - Int((Double(w) * anchor).rounded())
        for c in text.unicodeScalars {
            let g = font.glyph(c, size: size)
            for gy in 0..<g.rows {
                let cy = y - g.top + gy
                guard cy >= 0, cy < height else { continue }
                for gx in 0..<g.width {
                    let cx = pen + g.left + gx
                    guard cx >= 0, cx < width else { continue }
                    let a = Float(g.coverage[gy * g.width + gx]) / 255
                    if a > 0 { blend(cx, cy, color, a) }
                }
            }
            pen += g.advance
        }
        return w
    }
}
