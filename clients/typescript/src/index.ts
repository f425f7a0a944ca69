// chat-api-client: the /v1 API of chat-api, typed from its OpenAPI document, and the event stream
// helper. No runtime dependency: fetch, ReadableStream and TextDecoder (browsers, Node 20).
export {
  ChatClient,
  newIdempotencyKey,
  type Answer,
  type ClientOptions,
  type RequestOptions,
  type RetryOptions,
  type SendOptions,
  type SendResult,
  type TokenProvider,
} from "./client.js";
export { isTransient, ProblemError } from "./errors.js";
export { claimsOf, sleep } from "./util.js";
export { SseParser, type SseFrame } from "./sse.js";
export {
  EventStream,
  type ReconnectReason,
  type StreamCookieSession,
  type StreamOptions,
  type StreamState,
} from "./stream.js";
export * from "./types.js";
export type { components, operations, paths } from "./schema.js";
export { VERSION } from "./version.js";
