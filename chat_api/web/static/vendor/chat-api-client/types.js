export const CHAT_EVENT_TYPES = [
    "room.created",
    "room.updated",
    "member.added",
    "member.removed",
    "message.created",
    "message.updated",
    "message.deleted",
];
