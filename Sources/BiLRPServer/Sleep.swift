import Foundation
import NIOCore

/// Waits `seconds` on an event loop's timer; throws CancellationError as soon as the task is
/// cancelled, and then removes the timer. A cancelled `Task.sleep` keeps its timer queued until
/// it would have fired: with a 120 s request timeout raced against every request, 20 000
/// requests/s left millions of dead timers behind (RSS grew by about 0.8 KB a request and the
/// rate fell, measured with wrk on /health).
func sleep(seconds: Double, on loop: any EventLoop) async throws {
    final class State: @unchecked Sendable {
        let lock = NSLock()
        var continuation: CheckedContinuation<Void, any Error>?
        var timer: Scheduled<Void>?
        var cancelled = false
        var done = false

        /// Resumes once; the first caller wins.
        func finish(_ r: Result<Void, any Error>) {
            let c: CheckedContinuation<Void, any Error>? = lock.withLock {
                if done { return nil }
                done = true
                defer { continuation = nil }
                return continuation
            }
            c?.resume(with: r)
        }
    }
    let state = State()
    try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            let alreadyCancelled = state.lock.withLock { () -> Bool in
                if state.cancelled { state.done = true; return true }
                state.continuation = c
                state.timer = loop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) { state.finish(.success(())) }
                return false
            }
            if alreadyCancelled { c.resume(throwing: CancellationError()) }
        }
    } onCancel: {
        let timer = state.lock.withLock { () -> Scheduled<Void>? in
            state.cancelled = true
            return state.timer
        }
        timer?.cancel()
        state.finish(.failure(CancellationError()))
    }
}
