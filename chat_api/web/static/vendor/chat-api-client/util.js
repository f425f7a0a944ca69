// Small helpers of both the client and the stream helper (and of the web client): in a module of
// their own, so that the stream helper does not import the client's module, which imports it.
/** The claims of a JWT, read without verifying it (a client only wants its own `sub` and `exp`). */
export function claimsOf(token) {
    try {
        const part = (token.split(".")[1] ?? "").replace(/-/g, "+").replace(/_/g, "/");
        const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
        return claims && typeof claims === "object" ? claims : null;
    }
    catch {
        return null;
    }
}
export const sleep = (ms, signal) => new Promise((resolve) => {
    if (signal?.aborted)
        return resolve();
    const timer = setTimeout(done, ms);
    function done() {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
});
