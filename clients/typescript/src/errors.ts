// Errors: every error answer of the service is an RFC 9457 problem, thrown as a ProblemError.
import type { ProblemDetails } from "./types.js";

/** An error answer of the service: its status and problem fields (`type`, `title`, `detail`). */
export class ProblemError extends Error {
  readonly status: number;
  readonly type: string;
  readonly title: string;
  readonly detail: string;
  /** The whole problem body (validation problems carry `errors`); null when the body was not one. */
  readonly problem: ProblemDetails | null;
  /** `Retry-After` in seconds (429, 503), when the service sent one. */
  readonly retryAfter: number | null;

  constructor(status: number, problem: ProblemDetails | null, retryAfter: number | null = null) {
    super(problem?.detail || `HTTP ${status}`);
    this.name = "ProblemError";
    this.status = status;
    this.type = problem?.type ?? "about:blank";
    this.title = problem?.title ?? "";
    this.detail = problem?.detail ?? "";
    this.problem = problem;
    this.retryAfter = retryAfter;
  }
}

const TRANSIENT_STATUSES = new Set([408, 429, 502, 503, 504]);

/** A network failure or an answer that says "try again later": safe to retry (a send with its key). */
export function isTransient(error: unknown): boolean {
  if (error instanceof ProblemError) return TRANSIENT_STATUSES.has(error.status);
  // fetch rejects with a TypeError when the network fails; a timeout aborts with a TimeoutError.
  return error instanceof TypeError || (error instanceof Error && error.name === "TimeoutError");
}

export function retryAfterSeconds(headers: Headers): number | null {
  const value = headers.get("retry-after");
  if (value === null) return null;
  const seconds = Number(value);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : null;
}

/** Reads an error answer into a ProblemError (any JSON body is taken as the problem). */
export async function problemOf(response: Response): Promise<ProblemError> {
  let problem: ProblemDetails | null = null;
  if ((response.headers.get("content-type") || "").includes("json")) {
    try {
      problem = (await response.json()) as ProblemDetails;
    } catch {
      problem = null;
    }
  }
  return new ProblemError(response.status, problem, retryAfterSeconds(response.headers));
}
