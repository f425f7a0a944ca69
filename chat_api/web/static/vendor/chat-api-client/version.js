/** This library's version: the service's (chat_api.__version__), checked in CI. */
export const VERSION = "0.1.0";
