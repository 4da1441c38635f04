import Foundation
import Logging

/// One JSON object per line (`--log-format json`): `time`, `level`, `label`, `message`, and the
/// metadata's keys at the top level, as log collectors (Loki, Elasticsearch, CloudWatch) read them.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    let write: @Sendable (String) -> Void

    /// Writes to standard error unless `write` says otherwise (tests capture the lines).
    public init(label: String, write: @escaping @Sendable (String) -> Void = JSONLogHandler.standardError) {
        self.label = label
        self.write = write
    }

    public static let standardError: @Sendable (String) -> Void = { line in
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var object: [String: Any] = [:]
        for (k, v) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { object[k] = Self.json(v) }
        object["time"] = ISO8601DateFormatter.string(from: Date(), timeZone: .gmt,
                                                      formatOptions: [.withInternetDateTime, .withFractionalSeconds])
        object["level"] = event.level.rawValue
        object["label"] = label
        object["message"] = event.message.description
        if let error = event.error { object["error"] = String(describing: error) }
        if let d = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) {
            write(String(decoding: d, as: UTF8.self))
        }
    }

    /// Numbers and booleans logged as `.stringConvertible` stay numbers and booleans in JSON.
    static func json(_ v: Logger.Metadata.Value) -> Any {
        switch v {
        case let .string(s): return s
        case let .stringConvertible(c):
            if let b = c as? Bool { return b }
            if let i = c as? Int { return i }
            if let d = c as? Double { return d.isFinite ? d : "\(d)" }
            return c.description
        case let .array(a): return a.map(json)
        case let .dictionary(d): return d.mapValues(json)
        }
    }
}

extension Logger {
    /// The server's logger in `format` (`text`: swift-log's stream handler; `json`: `JSONLogHandler`).
    public static func bilrp(format: String) -> Logger {
        Logger(label: "bilrp") { label -> any LogHandler in
            if format == "json" { return JSONLogHandler(label: label) }
            if format == "off" { return SwiftLogNoOpLogHandler() }
            return StreamLogHandler.standardError(label: label)
        }
    }
}
