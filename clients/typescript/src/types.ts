// The service's objects, named: aliases of the generated OpenAPI types (src/schema.ts), plus the
// stream's frames, which an OpenAPI document cannot describe (docs/events.md is their contract).
import type { components, operations } from "./schema.js";

type Schemas = components["schemas"];

export type Room = Schemas["Room"];
export type RoomDetail = Schemas["RoomDetail"];
export type RoomPage = Schemas["RoomPage"];
export type NewRoom = Schemas["NewRoom"];
export type RoomChange = Schemas["RoomChange"];
export type Member = Schemas["Member"];
export type Message = Schemas["Message"];
export type MessagePage = Schemas["MessagePage"];
export type NewMessage = Schemas["NewMessage"];
export type Reaction = Schemas["Reaction"];
export type SearchPage = Schemas["SearchPage"];
export type ProblemDetails = Schemas["ProblemDetails"];

type Query<Op extends keyof operations> = NonNullable<operations[Op]["parameters"]["query"]>;

/** `GET /v1/rooms` query: `limit`, `cursor`. */
export type ListRoomsQuery = Query<"list_rooms_v1_rooms_get">;
/** `GET /v1/rooms/{room_id}/messages` query without `thread`: `limit`, and `before` or `after`. */
export type HistoryQuery = Omit<Query<"history_v1_rooms__room_id__messages_get">, "thread">;
/** `GET /v1/search` query: `q`, `room_id`, `limit`, `cursor`. */
export type SearchQuery = Query<"search_messages_v1_search_get">;

/** `POST /v1/session` (only when the service serves the web client): the stream cookie's facts. */
export interface StreamSession {
  user: string;
  stream_session: string;
  events_url: string;
  /** Seconds until the cookie's credential ends (the stream then ends with `event: reauth`). */
  expires_in: number;
}

export type MessageEventType = "message.created" | "message.updated" | "message.deleted";
export type MemberEventType = "member.added" | "member.removed";
export type RoomEventType = "room.created" | "room.updated";
export type ChatEventType = MessageEventType | MemberEventType | RoomEventType;

interface EventBase {
  /** The frame's `id:`, an opaque cursor: the stream resumes after it. */
  id: string;
  room_id: string;
  seq: number;
}

/** One change of the event log, as `GET /v1/events` sends it (the whole object, never a diff). */
export type ChatEvent =
  | (EventBase & { type: MessageEventType; message: Message })
  | (EventBase & { type: MemberEventType; member: Member })
  | (EventBase & { type: RoomEventType; room: Room });

/** `event: typing`: ephemeral, no id, not in the log, never replayed. */
export interface TypingNotice {
  room_id: string;
  user_id: string;
  expires_at: string;
}

export const CHAT_EVENT_TYPES: readonly ChatEventType[] = [
  "room.created",
  "room.updated",
  "member.added",
  "member.removed",
  "message.created",
  "message.updated",
  "message.deleted",
];
