// The event stream helper: GET /v1/events read with fetch (EventSource cannot send an Authorization
// header) and parsed here, so that one object does what every client of the stream must do:
//   - start from `stream_cursor` of GET /v1/rooms (or a given cursor): no gap after loading state;
//   - resume after any disconnect with Last-Event-ID (the last `id:` received), after a backoff that
//     starts at the server's `retry:` advice (and honours Retry-After);
//   - `event: reset`: await onReset (the app reloads its state), then go on from the frame's id;
//   - `event: reauth` (no id): reconnect at once with a fresh credential from the last id;
//   - apply by (room_id, seq): an event at or below the room's last applied seq is skipped;
//   - `event: typing` (no id) goes to onTyping and never moves the cursor; comments are ignored.
import type { ChatClient } from "./client.js";
import { claimsOf, sleep } from "./util.js";
import { isTransient, ProblemError, problemOf } from "./errors.js";
import { SseParser, type SseFrame } from "./sse.js";
import { CHAT_EVENT_TYPES, type ChatEvent, type ChatEventType, type TypingNotice } from "./types.js";

export type StreamState = "connecting" | "live" | "reconnecting" | "closed";

/** Why a connection ended: `reauth` frame, early `renew`al of the credential, the server `ended`
 * the stream, an `error` (network, HTTP), or nothing arrived for `idleTimeoutMs` (`idle`). */
export type ReconnectReason = "reauth" | "renew" | "ended" | "error" | "idle";

/** The web client's stream cookie (POST /v1/session) instead of a bearer token. */
export interface StreamCookieSession {
  /** `stream_session` of POST /v1/session: names the cookie (`?session=`). */
  id: string;
  /** Seconds the current cookie has left (`expires_in`), to renew it early. */
  expiresIn?: number;
  /** Gets a fresh cookie (POST /v1/session) and answers its facts. */
  renew: () => Promise<{ stream_session: string; expires_in: number }>;
}

export interface StreamOptions {
  /**
   * Where to start: a cursor (the stream sends what came after it); null: now (no replay);
   * undefined (the default): `stream_cursor` of GET /v1/rooms, read when the helper starts.
   */
  cursor?: string | null;
  /** Only this room's events (`?room_id=`). */
  roomId?: string;
  /** Each change once, in log order (within a room in increasing seq); awaited before the next. */
  onEvent: (event: ChatEvent) => void | Promise<void>;
  /** `event: typing` frames; they carry no id and never move the cursor. */
  onTyping?: (notice: TypingNotice) => void;
  /** The cursor was older than the retained log: reload your state. Awaited before going on. */
  onReset?: (info: { cursor: string }) => void | Promise<void>;
  onState?: (state: StreamState) => void;
  /** A failed connection (`fatal`: the helper stops, e.g. a 400 malformed cursor, a 401 with a
   * fresh credential, a 404 room), or an error thrown by onEvent/onReset (reported, then skipped). */
  onError?: (error: unknown, info: { fatal: boolean }) => void;
  /** Before each reconnection: why, and the cursor it resumes from. */
  onReconnect?: (info: { reason: ReconnectReason; lastEventId: string | null }) => void;
  /** Authenticate with the web client's stream cookie instead of the client's bearer token. */
  session?: StreamCookieSession;
  /** Reconnect with a fresh credential shortly before the current one expires (default true), so
   * the stream does not wait for `event: reauth`. */
  renewEarly?: boolean;
  /** The first reconnection delay until the server advises one with `retry:` (default 1000 ms). */
  retryMs?: number;
  /** The longest reconnection delay (default 30000 ms); delays double after each failure. */
  maxRetryMs?: number;
  /** Reconnect when nothing (not even a keepalive) arrived for this long (default 45000 ms). */
  idleTimeoutMs?: number;
  /** How many rooms' applied seqs are remembered for dedupe (default 10000; the least recent go). */
  maxRooms?: number;
}

const EVENT_TYPES = new Set<string>(CHAT_EVENT_TYPES);

class Unauthorized extends Error {}

export class EventStream {
  /** The last `id:` received: the stream resumes after it. */
  lastEventId: string | null = null;
  /** Settles when the helper has stopped (close(), or a fatal error). Never rejects. */
  readonly done: Promise<void>;

  private readonly client: ChatClient;
  private readonly options: StreamOptions;
  private readonly marks = new Map<string, number>(); // room id -> last applied seq
  private readonly stop = new AbortController();
  private connection: AbortController | null = null;
  private abortReason: ReconnectReason | null = null;
  private refresh = false; // the next connection asks for a fresh credential first
  private retryMs: number;
  private backoff: number;
  private retryAfterMs = 0;
  private renewTimer: ReturnType<typeof setTimeout> | undefined;
  private idleTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(client: ChatClient, options: StreamOptions) {
    this.client = client;
    this.options = options;
    this.retryMs = options.retryMs ?? 1000;
    this.backoff = this.retryMs;
    if (options.session?.expiresIn !== undefined) this.renewIn(options.session.expiresIn);
    this.done = this.run();
  }

  get closed(): boolean {
    return this.stop.signal.aborted;
  }

  /** Ends the stream and every timer; after it, the only callback is onState("closed"). */
  close(): void {
    if (this.closed) return;
    this.stop.abort();
    this.abortReason = "ended";
    this.connection?.abort();
    clearTimeout(this.renewTimer);
    clearTimeout(this.idleTimer);
  }

  /** Marks `seq` of the room as applied (e.g. `last_seq` from a listing): events at or below it
   * are skipped. Marks only move forward. */
  markSeen(roomId: string, seq: number): void {
    const mark = this.marks.get(roomId);
    if (mark === undefined || seq > mark) this.remember(roomId, seq);
  }

  /** The room's last applied seq, if remembered. */
  seenSeq(roomId: string): number | undefined {
    return this.marks.get(roomId);
  }

  private remember(roomId: string, seq: number): void {
    this.marks.delete(roomId); // re-inserted last: the map's order is least recently applied first
    this.marks.set(roomId, seq);
    const limit = this.options.maxRooms ?? 10_000;
    while (this.marks.size > limit) {
      const oldest = this.marks.keys().next().value;
      if (oldest === undefined) break;
      this.marks.delete(oldest);
    }
  }

  private state(state: StreamState): void {
    this.options.onState?.(state);
  }

  private async run(): Promise<void> {
    try {
      this.lastEventId =
        this.options.cursor === undefined
          ? await this.client.withRetries({ attempts: Infinity, signal: this.stop.signal }, async (signal) => {
              const answer = await this.client.request<{ stream_cursor: string }>("GET", "/v1/rooms", {
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
        let reason: ReconnectReason;
        try {
          reason = await this.connect();
        } catch (error) {
          if (this.closed) break;
          if (this.connection?.signal.aborted && this.abortReason) {
            reason = this.abortReason;
          } else if (error instanceof ProblemError && !isTransient(error)) {
            this.options.onError?.(error, { fatal: true });
            break;
          } else {
            this.options.onError?.(error, { fatal: false });
            reason = "error";
            if (error instanceof ProblemError && error.retryAfter !== null) {
              this.retryAfterMs = error.retryAfter * 1000;
            }
          }
        } finally {
          clearTimeout(this.idleTimer);
          this.connection = null;
        }
        if (this.closed) break;
        this.options.onReconnect?.({ reason, lastEventId: this.lastEventId });
        if (reason === "reauth" || reason === "renew") continue; // planned: at once
        await sleep(this.nextDelay(), this.stop.signal);
      }
    } catch (error) {
      if (!this.closed) this.options.onError?.(error, { fatal: true });
    } finally {
      this.close();
      this.state("closed");
    }
  }

  private nextDelay(): number {
    const delay = Math.max(this.backoff, this.retryAfterMs) * (0.9 + Math.random() * 0.2);
    this.retryAfterMs = 0;
    this.backoff = Math.min(this.backoff * 2, this.options.maxRetryMs ?? 30_000);
    return delay;
  }

  /** Opens one connection and reads it until it ends; answers why it ended. */
  private async connect(): Promise<ReconnectReason> {
    const connection = (this.connection = new AbortController());
    this.abortReason = null;
    let response: Response;
    try {
      response = await this.open(connection.signal);
    } catch (error) {
      if (!(error instanceof Unauthorized)) throw error;
      return "reauth"; // at once, with a fresh credential
    }
    this.refresh = false;
    this.backoff = this.retryMs;
    this.state("live");
    if (!response.body) return "ended";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    this.armIdle(connection);
    for (;;) {
      const { value, done } = await reader.read();
      if (done || this.closed) return "ended";
      this.armIdle(connection);
      for (const frame of parser.feed(decoder.decode(value, { stream: true }))) {
        if ((await this.handle(frame)) === "reauth") {
          connection.abort();
          return "reauth";
        }
        if (this.closed) return "ended";
      }
      if (parser.retry !== null && parser.retry !== this.retryMs) this.retryMs = this.backoff = parser.retry;
    }
  }

  private async open(signal: AbortSignal): Promise<Response> {
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    const query: Record<string, string | undefined> = { room_id: this.options.roomId };
    const session = this.options.session;
    if (session) {
      if (this.refresh) {
        const fresh = await session.renew();
        session.id = fresh.stream_session;
        this.renewIn(fresh.expires_in);
      }
      query.session = session.id;
    } else {
      const token = await this.client.token(this.refresh);
      if (token) {
        headers.Authorization = `Bearer ${token}`;
        this.renewBefore(token);
      }
    }
    if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
    const response = await this.client.fetch(this.client.url("/v1/events", query), {
      headers,
      signal,
      cache: "no-store",
    });
    if (response.ok) return response;
    const problem = await problemOf(response);
    if (problem.status === 401 && !this.refresh) {
      this.refresh = true;
      throw new Unauthorized();
    }
    throw problem;
  }

  private async handle(frame: SseFrame): Promise<"reauth" | void> {
    switch (frame.event) {
      case "typing":
        this.options.onTyping?.(JSON.parse(frame.data) as TypingNotice);
        return;
      case "reauth":
        this.refresh = true;
        return "reauth";
      case "reset":
        try {
          if (frame.id) await this.options.onReset?.({ cursor: frame.id });
        } catch (error) {
          this.options.onError?.(error, { fatal: false });
        }
        if (frame.id) this.lastEventId = frame.id;
        return;
    }
    if (EVENT_TYPES.has(frame.event)) {
      const data = JSON.parse(frame.data) as { room_id: string; seq: number };
      const mark = this.marks.get(data.room_id);
      if (mark === undefined || data.seq > mark) {
        const event = { ...data, type: frame.event as ChatEventType, id: frame.id ?? "" } as ChatEvent;
        try {
          await this.options.onEvent(event);
        } catch (error) {
          this.options.onError?.(error, { fatal: false });
        }
        this.remember(data.room_id, data.seq);
      }
    }
    // A repeat, or a kind this version does not know: skipped, its position kept.
    if (frame.id) this.lastEventId = frame.id;
  }

  private armIdle(connection: AbortController): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.abortReason = "idle";
      connection.abort();
    }, this.options.idleTimeoutMs ?? 45_000);
  }

  /** Renews the credential and reconnects when `seconds` are nearly over. */
  private renewIn(seconds: number): void {
    clearTimeout(this.renewTimer);
    if (this.options.renewEarly === false || this.closed || !(seconds > 0)) return;
    const margin = Math.min(30, seconds / 4);
    this.renewTimer = setTimeout(() => {
      this.refresh = true;
      if (this.connection) {
        this.abortReason = "renew";
        this.connection.abort();
      }
    }, (seconds - margin) * 1000);
  }

  private renewBefore(token: string): void {
    const claims = claimsOf(token);
    if (!claims || typeof claims.exp !== "number") return;
    const left = claims.exp - Date.now() / 1000;
    const life = typeof claims.iat === "number" ? claims.exp - claims.iat : 3600;
    // Renew when a quarter of its life (at most 30 s) is left: not for a token already that close.
    if (left > Math.min(30, life / 4)) this.renewIn(left);
    else clearTimeout(this.renewTimer);
  }
}
