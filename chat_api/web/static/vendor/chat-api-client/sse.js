// A server-sent events parser (the WHATWG "event stream" format), fed text as it arrives.
export class SseParser {
    /** The last `retry:` advice in milliseconds, or null. */
    retry = null;
    line = "";
    afterCR = false;
    event = "";
    data = [];
    id = undefined;
    /** Takes the next piece of text; returns the frames it completed. Comments are skipped. */
    feed(text) {
        const frames = [];
        let start = 0;
        for (let i = 0; i < text.length; i++) {
            const c = text.charCodeAt(i);
            if (c === 10 && this.afterCR) {
                // the \n of a \r\n whose \r ended the previous line
                this.afterCR = false;
                start = i + 1;
                continue;
            }
            this.afterCR = false;
            if (c === 10 || c === 13) {
                this.line += text.slice(start, i);
                this.endLine(frames);
                this.afterCR = c === 13;
                start = i + 1;
            }
        }
        this.line += text.slice(start);
        return frames;
    }
    endLine(frames) {
        const line = this.line;
        this.line = "";
        if (line === "") {
            if (this.data.length > 0) {
                frames.push({ event: this.event || "message", data: this.data.join("\n"), id: this.id });
            }
            this.event = "";
            this.data = [];
            this.id = undefined;
            return;
        }
        if (line.startsWith(":"))
            return; // a comment: `: keepalive`
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" "))
            value = value.slice(1);
        if (field === "event")
            this.event = value;
        else if (field === "data")
            this.data.push(value);
        else if (field === "id" && !value.includes("\0"))
            this.id = value;
        else if (field === "retry" && /^[0-9]+$/.test(value))
            this.retry = Number(value);
    }
}
