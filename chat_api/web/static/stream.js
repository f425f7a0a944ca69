// The live event stream: the browser's own EventSource on /v1/events.
//
// The stream is authenticated by the HttpOnly stream cookie (set by POST /v1/session: a stream-only
// credential for a few minutes), never by anything in the URL; the URL carries only `session` (which
// cookie) and the starting cursor, neither of them a secret. EventSource reconnects by itself and
// sends Last-Event-ID, so the server replays what was missed. When the browser gives up (an HTTP
// error such as 503 while a server drains, or 401), a new EventSource is opened here, from the last
// id seen, after refreshing the cookie.
//
// The server ends a stream when its credential runs out, with `event: reauth`. So shortly before
// then (and at once on a reauth frame) the page gets a fresh cookie — renewing its token first if
// it is mostly used up — and opens the stream again from the last id: nothing is lost.
//
// `event: typing` frames carry no id: they are not in the log and are handed to `onTyping` only.

const KINDS = [
  "room.created",
  "room.updated",
  "member.added",
  "member.removed",
  "message.created",
  "message.updated",
  "message.deleted",
];

export class EventStream {
  /** `beforeReopen()` renews the cookie and resolves to POST /v1/session's answer. */
  constructor(eventsUrl, { onEvent, onTyping, onReset, onState, beforeReopen }) {
    this.eventsUrl = eventsUrl;
    this.onEvent = onEvent;
    this.onTyping = onTyping;
    this.onReset = onReset;
    this.onState = onState;
    this.beforeReopen = beforeReopen;
    this.lastId = null;
    this.source = null;
    this.backoff = 1000;
    this.timer = null;
    this.renewTimer = null;
    this.stopped = false;
  }

  /** Opens the stream at `cursor`; `expiresIn`: seconds the current cookie has left. */
  start(cursor, expiresIn) {
    this.lastId = cursor || null;
    this.renewBefore(expiresIn);
    this.open();
  }

  renewBefore(expiresIn) {
    clearTimeout(this.renewTimer);
    if (typeof expiresIn !== "number") return;
    const margin = Math.min(30, expiresIn / 4);
    this.renewTimer = setTimeout(() => this.renew(), Math.max(0, expiresIn - margin) * 1000);
  }

  async refresh() {
    const session = await this.beforeReopen();
    this.renewBefore(session && session.expires_in);
  }

  /** A fresh cookie, then the same stream again from the last id (planned: no backoff). */
  async renew() {
    if (this.stopped) return;
    clearTimeout(this.renewTimer);
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    try {
      await this.refresh();
    } catch {
      this.reopenLater(); // the server may be away: try again with backoff
      return;
    }
    this.open();
  }

  url() {
    if (!this.lastId) return this.eventsUrl;
    const sep = this.eventsUrl.includes("?") ? "&" : "?";
    return `${this.eventsUrl}${sep}cursor=${encodeURIComponent(this.lastId)}`;
  }

  open() {
    if (this.stopped) return;
    this.onState(this.source ? "reconnecting" : "connecting");
    const source = (this.source = new EventSource(this.url()));
    source.onopen = () => {
      this.backoff = 1000;
      this.onState("live");
    };
    source.onerror = () => {
      if (source !== this.source) return;
      this.onState("reconnecting");
      if (source.readyState === EventSource.CLOSED) this.reopenLater();
      // Otherwise (CONNECTING) the browser retries by itself, with Last-Event-ID.
    };
    for (const kind of KINDS) {
      source.addEventListener(kind, (event) => {
        if (event.lastEventId) this.lastId = event.lastEventId;
        this.onEvent(kind, JSON.parse(event.data));
      });
    }
    source.addEventListener("typing", (event) => {
      // Ephemeral: no id line, never replayed, so it never moves the resume point.
      this.onTyping(JSON.parse(event.data));
    });
    source.addEventListener("reauth", () => {
      // The credential ran out (or was revoked): close before the browser retries with it.
      if (source === this.source) this.renew();
    });
    source.addEventListener("reset", (event) => {
      // The cursor was older than the retained log: reload state, continue from this id.
      if (event.lastEventId) this.lastId = event.lastEventId;
      this.onReset();
    });
  }

  reopenLater() {
    this.source.close();
    clearTimeout(this.timer);
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, 15000);
    this.timer = setTimeout(async () => {
      try {
        await this.refresh();
      } catch {
        // The server may still be away; the new EventSource will tell.
      }
      this.open();
    }, delay);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.renewTimer);
    if (this.source) this.source.close();
  }
}
