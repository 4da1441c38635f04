import BiLRP
import Foundation

/// The interactive explanation viewer: static HTML, CSS and JavaScript in this module's resources,
/// served by `bilrp serve` at `/` (it calls the JSON API), or written as one self-contained page
/// holding one explained pair (`bilrp explain --html`).
public enum Viewer {
    /// The files of the viewer and their content types, by the path the server serves them at.
    public static let files: [(path: String, resource: String, contentType: String)] = [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/viewer.js", "viewer.js", "text/javascript; charset=utf-8"),
        ("/viewer.css", "viewer.css", "text/css; charset=utf-8"),
    ]

    /// One file of the viewer (`index.html`, `viewer.js`, `viewer.css`).
    public static func file(_ name: String) throws -> String {
        let parts = name.split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2, let url = Bundle.module.url(forResource: parts[0], withExtension: parts[1], subdirectory: "viewer"),
              let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw BiLRPError.io("the viewer's file '\(name)' is missing from the BiLRPIO resources (next to the executable)")
        }
        return text
    }

    /// The viewer as one HTML file with its CSS, its JavaScript and one explained pair in it (the
    /// report, R as base64 NPY, the two inputs as the model saw them as base64 PNG): it opens from
    /// disk in a browser without a server or network.
    public static func selfContained(_ report: ExplanationReport, relevance: [Float], rows: Int, columns: Int,
                                     images: (RGBImage, RGBImage)) throws -> Data {
        var html = try file("index.html")
        let npy = NPY.encode(try Tensor(shape: [rows, columns], data: relevance)).base64EncodedString()
        func png(_ img: RGBImage) throws -> String {
            let bytes = img.pixels.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) }
            return try PNGEncoder.encode(rgb: bytes, width: img.width, height: img.height, channels: 3).base64EncodedString()
        }
        let reportJSON = String(decoding: try report.json(), as: UTF8.self)
        let data = "{\"report\": \(reportJSON), \"matrix_npy\": \"\(npy)\", \"images\": [\"\(try png(images.0))\", \"\(try png(images.1))\"]}"
        // "<" as \u003c: nothing in the data can close the script element.
        let safe = data.replacingOccurrences(of: "<", with: "\\u003c")
        html = try replace(html, "style", with: "<style>\n\(try file("viewer.css"))</style>")
        html = try replace(html, "data", with: "<script id=\"bilrp-data\" type=\"application/json\">\(safe)</script>")
        html = try replace(html, "script", with: "<script>\n\(try file("viewer.js").replacingOccurrences(of: "</script", with: "<\\/script"))</script>")
        return Data(html.utf8)
    }

    /// Replaces `<!--bilrp:NAME-->...<!--/bilrp:NAME-->` in the page.
    static func replace(_ html: String, _ name: String, with text: String) throws -> String {
        guard let a = html.range(of: "<!--bilrp:\(name)-->"), let b = html.range(of: "<!--/bilrp:\(name)-->", range: a.upperBound..<html.endIndex) else {
            throw BiLRPError.io("the viewer's index.html has no <!--bilrp:\(name)--> marker")
        }
        return html.replacingCharacters(in: a.lowerBound..<b.upperBound, with: text)
    }
}
