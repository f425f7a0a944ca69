import { claimsOf, sleep } from "./util.js";
import { isTransient, ProblemError, problemOf } from "./errors.js";
import { SseParser } from "./sse.js";
import { CHAT_EVENT_TYPES } from "./types.js";
const EVENT_TYPES = new Set(CHAT_EVENT_TYPES);
class Unauthorized extends Error {
}
export class EventStream {
    /** The last `id:` received: the stream resumes after it. */
    lastEventId = null;
    /** Settles when the helper has stopped (close(), or a fatal error). Never rejects. */
    done;
    client;
    options;
    marks = new Map(); // room id -> last applied seq
    stop = new AbortController();
    connection = null;
    abortReason = null;
    refresh = false; // the next connection asks for a fresh credential first
    retryMs;
    backoff;
    retryAfterMs = 0;
    renewTimer;
    idleTimer;
    constructor(client, options) {
        this.client = client;
        this.options = options;
        this.retryMs = options.retryMs ?? 1000;
        this.backoff = this.retryMs;
        if (options.session?.expiresIn !== undefined)
            this.renewIn(options.session.expiresIn);
        this.done = this.run();
    }
    get closed() {
        return this.stop.signal.aborted;
    }
    /** Ends the stream and every timer; after it, the only callback is onState("closed"). */
    close() {
        if (this.closed)
            return;
        this.stop.abort();
        this.abortReason = "ended";
        this.connection?.abort();
        clearTimeout(this.renewTimer);
        clearTimeout(this.idleTimer);
    }
    /** Marks `seq` of the room as applied (e.g. `last_seq` from a listing): events at or below it
     * are skipped. Marks only move forward. */
    markSeen(roomId, seq) {
        const mark = this.marks.get(roomId);
        if (mark === undefined || seq > mark)
            this.remember(roomId, seq);
    }
    /** The room's last applied seq, if remembered. */
    seenSeq(roomId) {
        return this.marks.get(roomId);
    }
    remember(roomId, seq) {
        this.marks.delete(roomId); // re-inserted last: the map's order is least recently applied first
        this.marks.set(roomId, seq);
        const limit = this.options.maxRooms ?? 10_000;
        while (this.marks.size > limit) {
            const oldest = this.marks.keys().next().value;
            if (oldest === undefined)
                break;
            this.marks.delete(oldest);
        }
    }
    state(state) {
        this.options.onState?.(state);
    }
    async run() {
        try {
            this.lastEventId =
                this.options.cursor === undefined
                    ? await this.client.withRetries({ attempts: Infinity, signal: this.stop.signal }, async (signal) => {
                        const answer = await this.client.request("GET", "/v1/rooms", {
                            query: { limit: 1 },
                            signal,
                        });
                        return answer.body.stream_cursor;
                    })
                    : this.options.cursor;
            let first = true;
            while (!this.closed) {
                this.state(first ? "connecting" : "reconnecting");
                first = false;
                let reason;
                try {
                    reason = await this.connect();
                }
                catch (error) {
                    if (this.closed)
                        break;
                    if (this.connection?.signal.aborted && this.abortReason) {
                        reason = this.abortReason;
                    }
                    else if (error instanceof ProblemError && !isTransient(error)) {
                        this.options.onError?.(error, { fatal: true });
                        break;
                    }
                    else {
                        this.options.onError?.(error, { fatal: false });
                        reason = "error";
                        if (error instanceof ProblemError && error.retryAfter !== null) {
                            this.retryAfterMs = error.retryAfter * 1000;
                        }
                    }
                }
                finally {
                    clearTimeout(this.idleTimer);
                    this.connection = null;
                }
                if (this.closed)
                    break;
                this.options.onReconnect?.({ reason, lastEventId: this.lastEventId });
                if (reason === "reauth" || reason === "renew")
                    continue; // planned: at once
                await sleep(this.nextDelay(), this.stop.signal);
            }
        }
        catch (error) {
            if (!this.closed)
                this.options.onError?.(error, { fatal: true });
        }
        finally {
            this.close();
            this.state("closed");
        }
    }
    nextDelay() {
        const delay = Math.max(this.backoff, this.retryAfterMs) * (0.9 + Math.random() * 0.2);
        this.retryAfterMs = 0;
        this.backoff = Math.min(this.backoff * 2, this.options.maxRetryMs ?? 30_000);
        return delay;
    }
    /** Opens one connection and reads it until it ends; answers why it ended. */
    async connect() {
        const connection = (this.connection = new AbortController());
        this.abortReason = null;
        let response;
        try {
            response = await this.open(connection.signal);
        }
        catch (error) {
            if (!(error instanceof Unauthorized))
                throw error;
            return "reauth"; // at once, with a fresh credential
        }
        this.refresh = false;
        this.backoff = this.retryMs;
        this.state("live");
        if (!response.body)
            return "ended";
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        const parser = new SseParser();
        this.armIdle(connection);
        for (;;) {
            const { value, done } = await reader.read();
            if (done || this.closed)
                return "ended";
            this.armIdle(connection);
            for (const frame of parser.feed(decoder.decode(value, { stream: true }))) {
                if ((await this.handle(frame)) === "reauth") {
                    connection.abort();
                    return "reauth";
                }
                if (this.closed)
                    return "ended";
            }
            if (parser.retry !== null && parser.retry !== this.retryMs)
                this.retryMs = this.backoff = parser.retry;
        }
    }
    async open(signal) {
        const headers = { Accept: "text/event-stream" };
        const query = { room_id: this.options.roomId };
        const session = this.options.session;
        if (session) {
            if (this.refresh) {
                const fresh = await session.renew();
                session.id = fresh.stream_session;
                this.renewIn(fresh.expires_in);
            }
            query.session = session.id;
        }
        else {
            const token = await this.client.token(this.refresh);
            if (token) {
                headers.Authorization = `Bearer ${token}`;
                this.renewBefore(token);
            }
        }
        if (this.lastEventId)
            headers["Last-Event-ID"] = this.lastEventId;
        const response = await this.client.fetch(this.client.url("/v1/events", query), {
            headers,
            signal,
            cache: "no-store",
        });
        if (response.ok)
            return response;
        const problem = await problemOf(response);
        if (problem.status === 401 && !this.refresh) {
            this.refresh = true;
            throw new Unauthorized();
        }
        throw problem;
    }
    async handle(frame) {
        switch (frame.event) {
            case "typing":
                this.options.onTyping?.(JSON.parse(frame.data));
                return;
            case "reauth":
                this.refresh = true;
                return "reauth";
            case "reset":
                try {
                    if (frame.id)
                        await this.options.onReset?.({ cursor: frame.id });
                }
                catch (error) {
                    this.options.onError?.(error, { fatal: false });
                }
                if (frame.id)
                    this.lastEventId = frame.id;
                return;
        }
        if (EVENT_TYPES.has(frame.event)) {
            const data = JSON.parse(frame.data);
            const mark = this.marks.get(data.room_id);
            if (mark === undefined || data.seq > mark) {
                const event = { ...data, type: frame.event, id: frame.id ?? "" };
                try {
                    await this.options.onEvent(event);
                }
                catch (error) {
                    this.options.onError?.(error, { fatal: false });
                }
                this.remember(data.room_id, data.seq);
            }
        }
        // A repeat, or a kind this version does not know: skipped, its position kept.
        if (frame.id)
            this.lastEventId = frame.id;
    }
    armIdle(connection) {
        clearTimeout(this.idleTimer);
        this.idleTimer = setTimeout(() => {
            this.abortReason = "idle";
            connection.abort();
        }, this.options.idleTimeoutMs ?? 45_000);
    }
    /** Renews the credential and reconnects when `seconds` are nearly over. */
    renewIn(seconds) {
        clearTimeout(this.renewTimer);
        if (this.options.renewEarly === false || this.closed || !(seconds > 0))
            return;
        const margin = Math.min(30, seconds / 4);
        this.renewTimer = setTimeout(() => {
            this.refresh = true;
            if (this.connection) {
                this.abortReason = "renew";
                this.connection.abort();
            }
        }, (seconds - margin) * 1000);
    }
    renewBefore(token) {
        const claims = claimsOf(token);
        if (!claims || typeof claims.exp !== "number")
            return;
        const left = claims.exp - Date.now() / 1000;
        const life = typeof claims.iat === "number" ? claims.exp - claims.iat : 3600;
        // Renew when a quarter of its life (at most 30 s) is left: not for a token already that close.
        if (left > Math.min(30, life / 4))
            this.renewIn(left);
        else
            clearTimeout(this.renewTimer);
    }
}
