import BiLRP
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes

/// `bilrp serve`: loads the model once, then answers until SIGINT or SIGTERM, letting in-flight
/// requests finish (Hummingbird's service lifecycle).
public enum BiLRPServer {
    public static func run(_ configuration: ServerConfiguration, logger: Logger? = nil,
                           onReady: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        let service = try ExplanationService(configuration: configuration, logger: logger)
        let app = application(service, onReady: onReady)
        var loaded: Logger.Metadata = ["version": .string(BiLRPVersion.string)]
        if let image = service.image {
            loaded["model"] = .string(image.source)
            loaded["head"] = .string(image.explainer.head.description)
            loaded["rules"] = .string(image.settings.rules)
        }
        if let text = service.text {
            loaded["text_model"] = .string(text.source)
            loaded["text_rules"] = .string(text.rules)
        }
        service.logger.info("loaded", metadata: loaded)
        try await app.runService()
        try await service.shutdown()
    }

    /// The application with the configuration's connection limits: at most `maxConnections` open
    /// (more wait in the listen backlog), idle connections closed, slow requests cut off.
    public static func application(_ service: ExplanationService,
                                   onReady: @escaping @Sendable (Int) -> Void = { _ in }) -> some ApplicationProtocol {
        let c = service.configuration
        let header = TimeAmount.nanoseconds(Int64(c.headerTimeoutSeconds * 1e9))
        let idle = TimeAmount.nanoseconds(Int64(c.idleTimeoutSeconds * 1e9))
        let body = TimeAmount.nanoseconds(Int64(c.bodyTimeoutSeconds * 1e9))
        var quiet = service.logger
        quiet.logLevel = .warning  // Hummingbird's own lines; ours are one per request
        return Application(
            router: service.router(),
            server: .http1(configuration: .init(
                additionalChannelHandlers: [RequestDeadlineHandler(header: header, idle: idle, body: body)],
                idleTimeout: idle)),
            configuration: .init(address: .hostname(c.host, port: c.port), serverName: "bilrp",
                                 availableConnectionsDelegate: MaximumAvailableConnections(c.maxConnections)),
            onServerRunning: { channel in onReady(channel.localAddress?.port ?? c.port) },
            logger: quiet)
    }
}

/// Closes a connection whose next request head has not arrived in time (`header` after the
/// connection opened, `idle` after the previous answer), or whose body has not fully arrived
/// `body` after its head. Read-idle timeouts alone let a client that trickles a byte every few
/// seconds hold a connection forever; these deadlines do not move when bytes arrive.
final class RequestDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let header: TimeAmount, idle: TimeAmount, body: TimeAmount
    private var deadline: Scheduled<Void>?
    /// Requests whose head arrived and whose answer is not written yet (HTTP/1.1 pipelining).
    private var inProgress = 0

    init(header: TimeAmount, idle: TimeAmount, body: TimeAmount) {
        self.header = header; self.idle = idle; self.body = body
    }

    private func arm(_ context: ChannelHandlerContext, _ after: TimeAmount) {
        deadline?.cancel()
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: after) { channel.close(promise: nil) }
    }

    func handlerAdded(context: ChannelHandlerContext) { arm(context, header) }

    func handlerRemoved(context: ChannelHandlerContext) { deadline?.cancel() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: inProgress += 1; arm(context, body)
        case .end: deadline?.cancel(); deadline = nil  // the answer may take as long as the request timeout
        case .body: break
        }
        context.fireChannelRead(data)
    }

    /// A client that closes its side while its request is under way has gone (nginx logs 499 the
    /// same way): close the connection, so that the request's computation is cancelled.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed, inProgress > 0 {
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            inProgress -= 1
            if inProgress == 0 { arm(context, idle) }
        }
        context.write(data, promise: promise)
    }
}
