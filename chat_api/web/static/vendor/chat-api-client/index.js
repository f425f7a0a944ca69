// chat-api-client: the /v1 API of chat-api, typed from its OpenAPI document, and the event stream
// helper. No runtime dependency: fetch, ReadableStream and TextDecoder (browsers, Node 20).
export { ChatClient, newIdempotencyKey, } from "./client.js";
export { isTransient, ProblemError } from "./errors.js";
export { claimsOf, sleep } from "./util.js";
export { SseParser } from "./sse.js";
export { EventStream, } from "./stream.js";
export * from "./types.js";
export { VERSION } from "./version.js";
