import Foundation
import Hummingbird

/// `bilrp serve`: loads the model once, then answers until SIGINT or SIGTERM, letting in-flight
/// requests finish (Hummingbird's service lifecycle).
public enum BiLRPServer {
    public static func run(_ configuration: ServerConfiguration, onReady: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        let service = try ExplanationService(configuration: configuration)
        let app = Application(
            router: service.router(),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "bilrp"),
            onServerRunning: { channel in onReady(channel.localAddress?.port ?? configuration.port) })
        try await app.runService()
        try await service.shutdown()
    }
}
