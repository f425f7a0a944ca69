// The typed client of the /v1 API over fetch: a token provider called for every request (asked
// once more with `{ refresh: true }` after a 401), RFC 9457 problems thrown as ProblemError, sends
// made safe to retry with one Idempotency-Key per message.
import { isTransient, ProblemError, problemOf } from "./errors.js";
import { EventStream } from "./stream.js";
import { claimsOf, sleep } from "./util.js";
/** A random Idempotency-Key (crypto.randomUUID needs a secure context; getRandomValues does not). */
export function newIdempotencyKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
const enc = encodeURIComponent;
export class ChatClient {
    baseUrl;
    fetch;
    tokenProvider;
    onUnauthorized;
    constructor(options = {}) {
        this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
        const token = options.token;
        this.tokenProvider = typeof token === "string" ? () => token : (token ?? null);
        this.onUnauthorized = options.onUnauthorized;
        this.fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    }
    /** The current token (from the provider), or null without one. */
    async token(refresh = false) {
        return this.tokenProvider ? await this.tokenProvider({ refresh }) : null;
    }
    /** The caller's user id: the current token's `sub`. */
    async userId() {
        const token = await this.token();
        const sub = token ? claimsOf(token)?.sub : undefined;
        if (!sub)
            throw new Error("no token with a `sub` claim to take the user id from");
        return sub;
    }
    url(path, query) {
        const params = new URLSearchParams();
        for (const [key, value] of Object.entries(query ?? {})) {
            if (value !== undefined && value !== null)
                params.set(key, String(value));
        }
        const search = params.toString();
        return `${this.baseUrl}${path}${search ? `?${search}` : ""}`;
    }
    /** One call of the API: the token, one retry with a refreshed token after a 401, problems thrown. */
    async request(method, path, options = {}) {
        let response = await this.send(method, path, options, await this.token());
        if (response.status === 401 && this.tokenProvider) {
            const fresh = await this.token(true);
            if (fresh) {
                await response.body?.cancel();
                response = await this.send(method, path, options, fresh);
            }
        }
        if (!response.ok) {
            const error = await problemOf(response);
            if (error.status === 401)
                this.onUnauthorized?.(error);
            throw error;
        }
        const type = response.headers.get("content-type") || "";
        const body = response.status === 204 || !type.includes("json") ? null : await response.json();
        return { status: response.status, headers: response.headers, body: body };
    }
    send(method, path, options, token) {
        const headers = { Accept: "application/json", ...options.headers };
        if (token)
            headers.Authorization = `Bearer ${token}`;
        const init = { method, headers, cache: "no-store" };
        if (options.signal)
            init.signal = options.signal;
        if (options.json !== undefined) {
            headers["Content-Type"] = "application/json";
            init.body = JSON.stringify(options.json);
        }
        return this.fetch(this.url(path, options.query), init);
    }
    async call(method, path, options) {
        return (await this.request(method, path, options)).body;
    }
    // -- rooms ---------------------------------------------------------------------------------------
    /** `POST /v1/rooms`: a new room; you are its owner. */
    createRoom(room) {
        return this.call("POST", "/v1/rooms", { json: room });
    }
    /** `GET /v1/rooms`: one page of your rooms, most recent activity first, with `stream_cursor`. */
    listRooms(query = {}) {
        return this.call("GET", "/v1/rooms", { query });
    }
    /** Every room, page after page (`next_cursor`). */
    async *rooms(query = {}) {
        let cursor;
        do {
            const page = await this.listRooms({ ...query, cursor });
            yield* page.items;
            cursor = page.next_cursor;
        } while (cursor);
    }
    /** `GET /v1/rooms/{room_id}`: the room with its members and their read markers. */
    getRoom(roomId) {
        return this.call("GET", `/v1/rooms/${enc(roomId)}`);
    }
    /** `PATCH /v1/rooms/{room_id}`: rename it or set its topic (`topic: null` clears it); owner only. */
    updateRoom(roomId, change) {
        return this.call("PATCH", `/v1/rooms/${enc(roomId)}`, { json: change });
    }
    /** `PUT /v1/rooms/{room_id}/members/{user_id}` (owner): `created` false when already a member. */
    async addMember(roomId, userId) {
        const answer = await this.request("PUT", `/v1/rooms/${enc(roomId)}/members/${enc(userId)}`);
        return { member: answer.body, created: answer.status === 201 };
    }
    /** `DELETE /v1/rooms/{room_id}/members/{user_id}`: the owner removes anyone, a member itself. */
    async removeMember(roomId, userId, options = {}) {
        const query = options.stayOut ? { stay_out: true } : undefined;
        await this.request("DELETE", `/v1/rooms/${enc(roomId)}/members/${enc(userId)}`, { query });
    }
    /** Leaves the room (yourself, from the token's `sub`); `stayOut`: never be added to it again. */
    async leaveRoom(roomId, options = {}) {
        await this.removeMember(roomId, await this.userId(), options);
    }
    /** `PUT /v1/dms/{user_id}`: your one direct room with that user (`created` when this call made it). */
    async openDirect(userId) {
        const answer = await this.request("PUT", `/v1/dms/${enc(userId)}`);
        return { room: answer.body, created: answer.status === 201 };
    }
    // -- messages ------------------------------------------------------------------------------------
    /**
     * `POST /v1/rooms/{room_id}/messages` with an Idempotency-Key: one per send (given or new), the
     * same on every retry, so a retry of a send that did arrive answers the first message (`replayed`)
     * and never makes a second one. Network failures, 429 and 5xx-unavailable are retried with backoff
     * (honouring Retry-After) up to `attempts`.
     */
    async sendMessage(roomId, message, options = {}) {
        const idempotencyKey = options.idempotencyKey ?? newIdempotencyKey();
        const answer = await this.withRetries(options, (signal) => this.request("POST", `/v1/rooms/${enc(roomId)}/messages`, {
            json: message,
            headers: { "Idempotency-Key": idempotencyKey },
            signal,
        }));
        return {
            message: answer.body,
            replayed: answer.status === 200 || answer.headers.get("idempotent-replayed") === "true",
            idempotencyKey,
        };
    }
    /** Runs `attempt` until it succeeds or fails with something that is not transient. */
    async withRetries(options, attempt) {
        const attempts = options.attempts ?? 5;
        let delay = 500;
        for (let n = 1;; n++) {
            try {
                return await attempt(options.signal);
            }
            catch (error) {
                if (n >= attempts || !isTransient(error) || options.signal?.aborted)
                    throw error;
                options.onRetry?.(error, n);
                const advised = error instanceof ProblemError && error.retryAfter !== null ? error.retryAfter * 1000 : 0;
                await sleep(Math.max(delay, advised), options.signal);
                delay = Math.min(delay * 2, 8000);
            }
        }
    }
    /** `GET /v1/rooms/{room_id}/messages`: a page of history in ascending seq (`before` or `after`). */
    history(roomId, query = {}) {
        return this.call("GET", `/v1/rooms/${enc(roomId)}/messages`, { query });
    }
    /** The replies of the thread whose first message is `root`, paged like history. */
    thread(roomId, root, query = {}) {
        return this.call("GET", `/v1/rooms/${enc(roomId)}/messages`, { query: { ...query, thread: root } });
    }
    /** `GET /v1/rooms/{room_id}/messages/{seq}`. */
    getMessage(roomId, seq) {
        return this.call("GET", `/v1/rooms/${enc(roomId)}/messages/${seq}`);
    }
    /** `PATCH /v1/rooms/{room_id}/messages/{seq}`: edit your message (409 once deleted). */
    editMessage(roomId, seq, body) {
        return this.call("PATCH", `/v1/rooms/${enc(roomId)}/messages/${seq}`, { json: { body } });
    }
    /** `DELETE /v1/rooms/{room_id}/messages/{seq}` (sender or owner): a tombstone stays. */
    async deleteMessage(roomId, seq) {
        await this.request("DELETE", `/v1/rooms/${enc(roomId)}/messages/${seq}`);
    }
    /** `PUT .../reactions/{emoji}` (the emoji percent-encoded): `created` false when you had already. */
    async addReaction(roomId, seq, emoji) {
        const answer = await this.request("PUT", this.reactionPath(roomId, seq, emoji));
        return { message: answer.body, created: answer.status === 201 };
    }
    /** `DELETE .../reactions/{emoji}`: takes yours back (also fine when there was none). */
    async removeReaction(roomId, seq, emoji) {
        await this.request("DELETE", this.reactionPath(roomId, seq, emoji));
    }
    reactionPath(roomId, seq, emoji) {
        return `/v1/rooms/${enc(roomId)}/messages/${seq}/reactions/${enc(emoji)}`;
    }
    /** `POST /v1/rooms/{room_id}/read`: moves your read marker forward (never back). */
    async markRead(roomId, seq) {
        await this.request("POST", `/v1/rooms/${enc(roomId)}/read`, { json: { seq } });
    }
    /** `POST /v1/rooms/{room_id}/typing`: the other members' streams get an `event: typing`. */
    async typing(roomId) {
        await this.request("POST", `/v1/rooms/${enc(roomId)}/typing`);
    }
    /** `GET /v1/search`: your rooms' messages matching `q`, newest first, `next_cursor`. */
    search(query) {
        return this.call("GET", "/v1/search", { query });
    }
    // -- the stream ----------------------------------------------------------------------------------
    /** Opens the event stream helper (see EventStream): it runs until `close()`. */
    stream(options) {
        return new EventStream(this, options);
    }
    /** `POST /v1/session` (only where the service serves the web client): sets the stream cookie. */
    openSession() {
        return this.call("POST", "/v1/session");
    }
    /** `DELETE /v1/session`: expires the stream cookie. */
    async closeSession() {
        await this.request("DELETE", "/v1/session");
    }
}
