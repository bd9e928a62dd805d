// The extension's log: a LogOutputChannel ("LoRA Studio") that also receives the runtime's
// stderr, so "Show Runtime Log" shows one place with both.

import * as vscode from 'vscode';

export interface Log {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  /** A line the runtime wrote on stderr. */
  runtime(line: string): void;
  show(): void;
}

export class OutputLog implements Log, vscode.Disposable {
  private readonly channel = vscode.window.createOutputChannel('LoRA Studio', { log: true });

  info(message: string): void {
    this.channel.info(message);
  }
  warn(message: string): void {
    this.channel.warn(message);
  }
  error(message: string): void {
    this.channel.error(message);
  }
  runtime(line: string): void {
    this.channel.info(`[runtime] ${line}`);
  }
  show(): void {
    this.channel.show(true);
  }
  dispose(): void {
    this.channel.dispose();
  }
}
