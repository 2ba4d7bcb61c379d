/**
 * Test helpers for a frozen peer: an HTTP server on loopback (node:http) that takes requests and answers
 * none, as a process stopped by SIGSTOP does (its kernel still accepts the connections).
 */
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface HangingServer {
  /** `http://127.0.0.1:<port>` */
  origin: string;
  /** The requests it took, `METHOD /path`, in order. */
  seen: string[];
  /** Ends the answers left hanging and closes the server. */
  close(): Promise<void>;
}

/** `start`, when given, begins each answer (its head, part of its body) before the server freezes. */
export async function hangingServer(start?: (res: ServerResponse) => void): Promise<HangingServer> {
  const hanging: ServerResponse[] = [];
  const seen: string[] = [];
  const server = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      seen.push(`${req.method} ${req.url}`);
      start?.(res);
      hanging.push(res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const res of hanging.splice(0)) res.destroy();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** Resolves once `check()` holds, looking again after each turn of the event loop (not a timer). */
export async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setImmediate(resolve));
}

/** `sessionStorage` for Node. */
export class MemoryStorage {
  private data = new Map<string, string>();
  get length(): number {
    return this.data.size;
  }
  key(i: number): string | null {
    return [...this.data.keys()][i] ?? null;
  }
  getItem(k: string): string | null {
    return this.data.get(k) ?? null;
  }
  setItem(k: string, v: string): void {
    this.data.set(k, v);
  }
  removeItem(k: string): void {
    this.data.delete(k);
  }
  clear(): void {
    this.data.clear();
  }
}
