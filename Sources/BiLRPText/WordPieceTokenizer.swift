import BiLRP
import Foundation

/// One token of an encoded text: its vocabulary id, its string, and the span of the original text it
/// came from, in Unicode code points (the indices of Python's `str`, as Hugging Face reports them).
/// Special tokens that the tokenizer added ([CLS], [SEP]) have the empty span 0..<0.
public struct TextToken: Sendable, Equatable, Codable {
    public let id: Int
    public let text: String
    public let span: Range<Int>
    public let isSpecial: Bool
}

/// A text as the model sees it: [CLS], the word pieces (truncated to the maximum length), [SEP].
public struct EncodedText: Sendable, Equatable {
    public let text: String
    public let tokens: [TextToken]
    /// Word pieces dropped by truncation (0 when the text fit).
    public let truncatedPieces: Int
    public var ids: [Int] { tokens.map(\.id) }
    /// The original substring a token covers (empty for added special tokens).
    public func substring(of token: TextToken) -> String {
        let scalars = Array(text.unicodeScalars)
        var s = String.UnicodeScalarView()
        s.append(contentsOf: scalars[token.span.clamped(to: 0..<scalars.count)])
        return String(s)
    }
}

/// BERT's WordPiece tokenizer, as Hugging Face `tokenizers` runs it for a `tokenizer.json` with a
/// `BertNormalizer`, a `BertPreTokenizer` and a `WordPiece` model (or `vocab.txt` with the options of
/// `tokenizer_config.json`):
///
/// 1. Added tokens written literally in the text ("[MASK]") are taken as they are.
/// 2. Normalization: control and format characters dropped and every white space made a space
///    (clean_text), spaces around CJK ideographs, canonical decomposition with the non-spacing marks
///    dropped (strip_accents; by default whenever lower-casing), lower-casing.
/// 3. Pre-tokenization: split at white space, and every punctuation character a word of its own.
/// 4. WordPiece: greedy longest match from the left, continuation pieces prefixed "##"; a word with
///    a piece not in the vocabulary, or longer than `maxInputCharsPerWord`, is one [UNK].
///
/// Every step keeps, for each character, the original character it came from, so every token knows
/// its span in the original string. The vocabulary is looked up by UTF-8 bytes, not by Swift string
/// equality (which would match a decomposed Hangul syllable to its precomposed form, as the Rust
/// tokenizer does not).
public struct WordPieceTokenizer: Sendable {
    public struct Options: Sendable, Equatable {
        public var lowercase = true
        /// nil: strip when lower-casing (BERT's default).
        public var stripAccents: Bool? = nil
        public var cleanText = true
        public var handleChineseChars = true
        public var maxInputCharsPerWord = 100
        public var continuingSubwordPrefix = "##"
        public init() {}
    }

    public let options: Options
    public let vocabulary: [String]
    public let unknownID: Int
    public let clsID: Int
    public let sepID: Int
    public let padID: Int
    private let ids: [[UInt8]: Int]
    /// Added tokens matched literally in the input, longest first.
    private let addedTokens: [(scalars: [Unicode.Scalar], id: Int)]

    public init(vocabulary: [String], options: Options = Options(), unknown: String = "[UNK]", cls: String = "[CLS]",
                sep: String = "[SEP]", pad: String = "[PAD]", addedTokens: [String]? = nil) throws {
        var ids: [[UInt8]: Int] = [:]
        for (i, w) in vocabulary.enumerated() where ids[Array(w.utf8)] == nil { ids[Array(w.utf8)] = i }
        func id(_ t: String) throws -> Int {
            guard let i = ids[Array(t.utf8)] else { throw BiLRPError.invalidArgument("tokenizer: the vocabulary has no token '\(t)'") }
            return i
        }
        self.options = options
        self.vocabulary = vocabulary
        self.ids = ids
        unknownID = try id(unknown)
        clsID = try id(cls)
        sepID = try id(sep)
        padID = try id(pad)
        let added = try (addedTokens ?? [pad, unknown, cls, sep, "[MASK]"].filter { ids[Array($0.utf8)] != nil })
            .map { (scalars: Array($0.unicodeScalars), id: try id($0)) }
        self.addedTokens = added.filter { !$0.scalars.isEmpty }.sorted { $0.scalars.count > $1.scalars.count }
    }

    /// Loads `vocab.txt` (one token per line, the line number is its id) and the options of
    /// `tokenizer.json` when the folder has one, else of `tokenizer_config.json`.
    public static func load(directory: String) throws -> WordPieceTokenizer {
        let dir = URL(fileURLWithPath: directory)
        let vocabPath = dir.appendingPathComponent("vocab.txt").path
        guard let data = FileManager.default.contents(atPath: vocabPath) else {
            throw BiLRPError.io("tokenizer: cannot read '\(vocabPath)' (a BERT model folder has its WordPiece vocabulary there)")
        }
        guard var text = String(data: data, encoding: .utf8) else { throw BiLRPError.io("tokenizer: '\(vocabPath)' is not UTF-8") }
        if text.hasSuffix("\n") { text.removeLast() }
        let vocabulary = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            line.hasSuffix("\r") ? String(line.dropLast()) : String(line)
        }
        var options = Options()
        var unknown = "[UNK]"
        var added: [String]? = nil
        if let json = try readJSONObject(dir.appendingPathComponent("tokenizer.json").path) {
            try parseTokenizerJSON(json, options: &options, unknown: &unknown, added: &added)
        } else if let config = try readJSONObject(dir.appendingPathComponent("tokenizer_config.json").path) {
            if let v = config["do_lower_case"] as? Bool { options.lowercase = v }
            if let v = config["strip_accents"] as? Bool { options.stripAccents = v }
            if let v = config["tokenize_chinese_chars"] as? Bool { options.handleChineseChars = v }
            if let v = config["unk_token"] as? String { unknown = v }
        }
        return try WordPieceTokenizer(vocabulary: vocabulary, options: options, unknown: unknown, addedTokens: added)
    }

    private static func readJSONObject(_ path: String) throws -> [String: Any]? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw BiLRPError.io("tokenizer: '\(path)' is not a JSON object")
        }
        return obj
    }

    private static func parseTokenizerJSON(_ json: [String: Any], options: inout Options, unknown: inout String,
                                           added: inout [String]?) throws {
        func type(_ key: String) -> String? { (json[key] as? [String: Any])?["type"] as? String }
        guard let model = json["model"] as? [String: Any], model["type"] as? String == "WordPiece" else {
            throw BiLRPError.unsupported("tokenizer.json: model type '\(type("model") ?? "none")'; supported: WordPiece (BERT)")
        }
        guard let normalizer = json["normalizer"] as? [String: Any], normalizer["type"] as? String == "BertNormalizer" else {
            throw BiLRPError.unsupported("tokenizer.json: normalizer '\(type("normalizer") ?? "none")'; supported: BertNormalizer")
        }
        guard type("pre_tokenizer") == "BertPreTokenizer" else {
            throw BiLRPError.unsupported("tokenizer.json: pre_tokenizer '\(type("pre_tokenizer") ?? "none")'; supported: BertPreTokenizer")
        }
        if let v = normalizer["lowercase"] as? Bool { options.lowercase = v }
        if let v = normalizer["strip_accents"] as? Bool { options.stripAccents = v }
        if let v = normalizer["clean_text"] as? Bool { options.cleanText = v }
        if let v = normalizer["handle_chinese_chars"] as? Bool { options.handleChineseChars = v }
        if let v = model["max_input_chars_per_word"] as? Int { options.maxInputCharsPerWord = v }
        if let v = model["continuing_subword_prefix"] as? String { options.continuingSubwordPrefix = v }
        if let v = model["unk_token"] as? String { unknown = v }
        if let list = json["added_tokens"] as? [[String: Any]] { added = list.compactMap { $0["content"] as? String } }
    }

    // MARK: - Encoding

    /// [CLS] pieces [SEP], with at most `maxLength` tokens in all (the pieces beyond are dropped, as
    /// Hugging Face truncates a single sequence).
    public func encode(_ text: String, maxLength: Int? = nil) -> EncodedText {
        var pieces = wordPieces(text)
        var dropped = 0
        if let maxLength {
            let keep = max(0, maxLength - 2)
            if pieces.count > keep { dropped = pieces.count - keep; pieces.removeLast(dropped) }
        }
        let cls = TextToken(id: clsID, text: vocabulary[clsID], span: 0..<0, isSpecial: true)
        let sep = TextToken(id: sepID, text: vocabulary[sepID], span: 0..<0, isSpecial: true)
        return EncodedText(text: text, tokens: [cls] + pieces + [sep], truncatedPieces: dropped)
    }

    /// The word pieces of a text, without [CLS] and [SEP].
    public func wordPieces(_ text: String) -> [TextToken] {
        let scalars = Array(text.unicodeScalars)
        var out: [TextToken] = []
        var start = 0
        var i = 0
        while i < scalars.count {
            if let (n, id) = addedToken(at: i, in: scalars) {
                appendPieces(of: scalars, start..<i, to: &out)
                out.append(TextToken(id: id, text: vocabulary[id], span: i..<(i + n), isSpecial: true))
                i += n
                start = i
            } else {
                i += 1
            }
        }
        appendPieces(of: scalars, start..<scalars.count, to: &out)
        return out
    }

    private func addedToken(at i: Int, in s: [Unicode.Scalar]) -> (Int, Int)? {
        for t in addedTokens where i + t.scalars.count <= s.count {
            if s[i..<(i + t.scalars.count)].elementsEqual(t.scalars) { return (t.scalars.count, t.id) }
        }
        return nil
    }

    private func appendPieces(of scalars: [Unicode.Scalar], _ range: Range<Int>, to out: inout [TextToken]) {
        guard !range.isEmpty else { return }
        for word in words(normalize(scalars, range)) { out.append(contentsOf: pieces(of: word)) }
    }

    /// A normalized character and the index of the original character it came from.
    private struct Aligned { var scalar: Unicode.Scalar; var origin: Int }

    private func normalize(_ scalars: [Unicode.Scalar], _ range: Range<Int>) -> [Aligned] {
        var out: [Aligned] = []
        out.reserveCapacity(range.count)
        let strip = options.stripAccents ?? options.lowercase
        for i in range {
            var c = scalars[i]
            if options.cleanText {
                if c.value == 0 || c.value == 0xFFFD || Self.isControl(c) { continue }
                if Self.isWhitespace(c) { c = " " }
            }
            if options.handleChineseChars && Self.isChinese(c) {
                out.append(Aligned(scalar: " ", origin: i))
                out.append(Aligned(scalar: c, origin: i))
                out.append(Aligned(scalar: " ", origin: i))
                continue
            }
            for d in strip ? Self.decomposed(c) : [c] {
                if strip && d.properties.generalCategory == .nonspacingMark { continue }
                if options.lowercase {
                    if d.isASCII {
                        out.append(Aligned(scalar: Unicode.Scalar(UInt8(ascii: d) | (d.properties.isUppercase ? 0x20 : 0)), origin: i))
                    } else {
                        for l in d.properties.lowercaseMapping.unicodeScalars { out.append(Aligned(scalar: l, origin: i)) }
                    }
                } else {
                    out.append(Aligned(scalar: d, origin: i))
                }
            }
        }
        return out
    }

    /// White space removed, every punctuation character a word of its own.
    private func words(_ s: [Aligned]) -> [[Aligned]] {
        var words: [[Aligned]] = []
        var current: [Aligned] = []
        for a in s {
            if a.scalar.properties.isWhitespace {
                if !current.isEmpty { words.append(current); current = [] }
            } else if Self.isPunctuation(a.scalar) {
                if !current.isEmpty { words.append(current); current = [] }
                words.append([a])
            } else {
                current.append(a)
            }
        }
        if !current.isEmpty { words.append(current) }
        return words
    }

    private func pieces(of word: [Aligned]) -> [TextToken] {
        func span(_ r: Range<Int>) -> Range<Int> { word[r.lowerBound].origin..<(word[r.upperBound - 1].origin + 1) }
        let unknown = [TextToken(id: unknownID, text: vocabulary[unknownID], span: span(0..<word.count), isSpecial: false)]
        if word.count > options.maxInputCharsPerWord { return unknown }
        let utf8 = word.map { Array(String($0.scalar).utf8) }
        let prefix = Array(options.continuingSubwordPrefix.utf8)
        var out: [TextToken] = []
        var start = 0
        while start < word.count {
            var end = word.count
            var found: Int? = nil
            while end > start {
                var key = start > 0 ? prefix : []
                for j in start..<end { key.append(contentsOf: utf8[j]) }
                if let id = ids[key] { found = id; break }
                end -= 1
            }
            guard let id = found else { return unknown }
            out.append(TextToken(id: id, text: vocabulary[id], span: span(start..<end), isSpecial: false))
            start = end
        }
        return out
    }

    // MARK: - Character classes (as the Rust tokenizer defines them)

    static func isWhitespace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }

    /// Cc, Cf, Co and Cs, except tab, newline and carriage return (unassigned code points are kept).
    static func isControl(_ c: Unicode.Scalar) -> Bool {
        if c == "\t" || c == "\n" || c == "\r" { return false }
        switch c.properties.generalCategory {
        case .control, .format, .privateUse, .surrogate: return true
        default: return false
        }
    }

    /// ASCII punctuation (which includes $ + < = > ^ ` | ~) and the Unicode punctuation categories.
    static func isPunctuation(_ c: Unicode.Scalar) -> Bool {
        let v = c.value
        if (33...47).contains(v) || (58...64).contains(v) || (91...96).contains(v) || (123...126).contains(v) { return true }
        switch c.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            return true
        default: return false
        }
    }

    /// The CJK Unified Ideographs blocks and their extensions and compatibility forms.
    static func isChinese(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F, 0x2B740...0x2B81F,
             0x2B920...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F:
            return true
        default: return false
        }
    }

    /// The canonical decomposition (NFD) of one character.
    static func decomposed(_ c: Unicode.Scalar) -> [Unicode.Scalar] {
        if c.isASCII { return [c] }
        return Array(String(c).decomposedStringWithCanonicalMapping.unicodeScalars)
    }
}
