// Serves the built panel exactly as the extension renders it (same HTML, same CSP) from a
// local HTTP server, and opens it in headless Debian Chromium with a stand-in for
// acquireVsCodeApi that records what the panel posts. Theme variables are applied to the
// root element the way VS Code applies them to a webview.

import { createServer, type Server } from 'node:http';
import { existsSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { chromium, type Browser, type Page } from 'playwright-core';
import { renderCompareHtml, renderPanelHtml, renderPlaygroundHtml } from '../../src/extension/panelHtml';

export const ROOT = path.resolve(__dirname, '..', '..', '..');
export const CHROMIUM = '/usr/bin/chromium';
export const SCREENSHOTS = path.join(ROOT, 'test-output', 'screenshots');

export type Theme = 'light' | 'dark';

// A subset of the variables VS Code sets on a webview's root, taken from its default
// Light+ and Dark+ themes; enough for every variable the panel and charts read.
const THEMES: Record<Theme, Record<string, string>> = {
  dark: {
    '--vscode-font-family': '-apple-system, BlinkMacSystemFont, "Segoe UI", "Ubuntu", "Droid Sans", sans-serif',
    '--vscode-font-size': '13px',
    '--vscode-editor-font-family': 'monospace',
    '--vscode-editor-font-size': '12px',
    '--vscode-foreground': '#cccccc',
    '--vscode-descriptionForeground': '#9d9d9d',
    '--vscode-disabledForeground': '#6b6b6b',
    '--vscode-errorForeground': '#f85149',
    '--vscode-editorWarning-foreground': '#cca700',
    '--vscode-focusBorder': '#0078d4',
    '--vscode-sideBar-background': '#181818',
    '--vscode-editor-background': '#1f1f1f',
    '--vscode-sideBarSectionHeader-foreground': '#cccccc',
    '--vscode-sideBarSectionHeader-border': '#2b2b2b',
    '--vscode-widget-border': '#313131',
    '--vscode-editorWidget-border': '#454545',
    '--vscode-input-background': '#313131',
    '--vscode-input-border': '#3c3c3c',
    '--vscode-input-foreground': '#cccccc',
    '--vscode-badge-background': '#616161',
    '--vscode-badge-foreground': '#f8f8f8',
    '--vscode-progressBar-background': '#0078d4',
    '--vscode-textBlockQuote-background': '#2b2b2b',
    '--vscode-textCodeBlock-background': '#2b2b2b',
    '--vscode-diffEditor-insertedTextBackground': 'rgba(156, 204, 44, 0.2)',
    '--vscode-inputValidation-warningBackground': '#352a05',
    '--vscode-inputValidation-errorBackground': '#5a1d1d',
    '--vscode-inputValidation-errorBorder': '#be1100',
    '--vscode-testing-iconPassed': '#73c991',
    '--vscode-editor-selectionBackground': '#264f78',
    '--vscode-charts-blue': '#3794ff',
    '--vscode-charts-orange': '#d18616',
    '--vscode-charts-green': '#89d185',
    '--vscode-charts-red': '#f14c4c',
    '--vscode-charts-purple': '#b180d7',
    '--vscode-charts-yellow': '#cca700',
    '--vscode-button-background': '#0078d4',
    '--vscode-button-foreground': '#ffffff',
    '--vscode-button-hoverBackground': '#026ec1',
    '--vscode-button-secondaryBackground': '#313131',
    '--vscode-button-secondaryForeground': '#cccccc',
    '--vscode-button-secondaryHoverBackground': '#3c3c3c',
    '--vscode-checkbox-background': '#313131',
    '--vscode-checkbox-border': '#3c3c3c',
    '--vscode-checkbox-foreground': '#cccccc',
    '--vscode-dropdown-background': '#313131',
    '--vscode-dropdown-border': '#3c3c3c',
    '--vscode-dropdown-foreground': '#cccccc',
    '--vscode-settings-textInputBackground': '#313131',
  },
  light: {
    '--vscode-font-family': '-apple-system, BlinkMacSystemFont, "Segoe UI", "Ubuntu", "Droid Sans", sans-serif',
    '--vscode-font-size': '13px',
    '--vscode-editor-font-family': 'monospace',
    '--vscode-editor-font-size': '12px',
    '--vscode-foreground': '#3b3b3b',
    '--vscode-descriptionForeground': '#717171',
    '--vscode-disabledForeground': '#9a9a9a',
    '--vscode-errorForeground': '#e51400',
    '--vscode-editorWarning-foreground': '#bf8803',
    '--vscode-focusBorder': '#005fb8',
    '--vscode-sideBar-background': '#f8f8f8',
    '--vscode-editor-background': '#ffffff',
    '--vscode-sideBarSectionHeader-foreground': '#3b3b3b',
    '--vscode-sideBarSectionHeader-border': '#e5e5e5',
    '--vscode-widget-border': '#e5e5e5',
    '--vscode-editorWidget-border': '#c8c8c8',
    '--vscode-input-background': '#ffffff',
    '--vscode-input-border': '#cecece',
    '--vscode-input-foreground': '#3b3b3b',
    '--vscode-badge-background': '#cccccc',
    '--vscode-badge-foreground': '#3b3b3b',
    '--vscode-progressBar-background': '#005fb8',
    '--vscode-textBlockQuote-background': '#f2f2f2',
    '--vscode-textCodeBlock-background': '#f2f2f2',
    '--vscode-diffEditor-insertedTextBackground': 'rgba(156, 204, 44, 0.25)',
    '--vscode-inputValidation-warningBackground': '#f6f5d2',
    '--vscode-inputValidation-errorBackground': '#f2dede',
    '--vscode-inputValidation-errorBorder': '#be1100',
    '--vscode-testing-iconPassed': '#388a34',
    '--vscode-editor-selectionBackground': '#add6ff',
    '--vscode-charts-blue': '#1a85ff',
    '--vscode-charts-orange': '#d18616',
    '--vscode-charts-green': '#388a34',
    '--vscode-charts-red': '#e51400',
    '--vscode-charts-purple': '#652d90',
    '--vscode-charts-yellow': '#bf8803',
    '--vscode-button-background': '#005fb8',
    '--vscode-button-foreground': '#ffffff',
    '--vscode-button-hoverBackground': '#0258a8',
    '--vscode-button-secondaryBackground': '#e5e5e5',
    '--vscode-button-secondaryForeground': '#3b3b3b',
    '--vscode-button-secondaryHoverBackground': '#cccccc',
    '--vscode-checkbox-background': '#f8f8f8',
    '--vscode-checkbox-border': '#cecece',
    '--vscode-checkbox-foreground': '#3b3b3b',
    '--vscode-dropdown-background': '#ffffff',
    '--vscode-dropdown-border': '#cecece',
    '--vscode-dropdown-foreground': '#3b3b3b',
    '--vscode-settings-textInputBackground': '#ffffff',
  },
};

let built = false;
/** Builds dist/webview once per test process (type check + bundle), unless it is fresh. */
export function buildPanel(): void {
  if (built) return;
  const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'build-webview.mjs')], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`build-webview failed:\n${r.stdout}\n${r.stderr}`);
  built = true;
}

export interface PanelServer { url: string; close(): Promise<void> }

export async function servePanel(): Promise<PanelServer> {
  buildPanel();
  const dist = path.join(ROOT, 'dist', 'webview');
  let origin = '';
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (url.pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(renderPanelHtml({ cspSource: origin, scriptUri: `${origin}/panel.js`, styleUri: `${origin}/panel.css` }));
      return;
    }
    if (url.pathname === '/compare') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(renderCompareHtml({ cspSource: origin, scriptUri: `${origin}/compare.js`, styleUri: `${origin}/panel.css` }));
      return;
    }
    if (url.pathname === '/playground') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(renderPlaygroundHtml({ cspSource: origin, scriptUri: `${origin}/playground.js`, styleUri: `${origin}/panel.css` }));
      return;
    }
    const file = path.join(dist, path.basename(url.pathname));
    if (!existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': file.endsWith('.js') ? 'text/javascript' : 'text/css' });
    res.end(readFileSync(file));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url: `${origin}/`, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
           '--disable-sync', '--no-first-run'],
  });
}

export interface OpenPanel { page: Page; consoleErrors: string[]; cspViolations: string[] }

/** Opens the panel with the given theme; `window.__posted` collects what it posts. */
export async function openPanel(browser: Browser, url: string, theme: Theme, viewport = { width: 420, height: 900 }): Promise<OpenPanel> {
  const page = await browser.newPage({ viewport, deviceScaleFactor: 1 });
  const consoleErrors: string[] = [];
  const cspViolations: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  await page.exposeFunction('__cspViolation', (s: string) => cspViolations.push(s));
  await page.addInitScript(({ vars, theme }) => {
    const w = globalThis as any;
    w.__posted = [];
    w.__state = undefined;
    w.acquireVsCodeApi = () => ({
      postMessage: (m: unknown) => w.__posted.push(JSON.parse(JSON.stringify(m))),
      getState: () => w.__state,
      setState: (s: unknown) => { w.__state = s; },
    });
    w.document.addEventListener('securitypolicyviolation', (e: any) =>
      w.__cspViolation(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}:${e.columnNumber} ${e.sample}`));
    // The root element exists only once parsing starts; set the variables as soon as it does.
    const apply = () => {
      const root = w.document.documentElement;
      if (!root) return false;
      for (const [k, v] of Object.entries(vars)) root.style.setProperty(k, v as string);
      return true;
    };
    if (!apply()) {
      const mo = new w.MutationObserver(() => { if (apply()) mo.disconnect(); });
      mo.observe(w.document, { childList: true });
    }
    w.document.addEventListener('DOMContentLoaded', () => {
      w.document.body.classList.add(theme === 'dark' ? 'vscode-dark' : 'vscode-light');
    });
  }, { vars: THEMES[theme], theme });
  await page.goto(url);
  await page.waitForFunction(() => (globalThis as any).__posted.some((m: any) => m.type === 'ready'));
  return { page, consoleErrors, cspViolations };
}

/** Delivers a message to the panel the way the webview host does (a window message event). */
export async function send(page: Page, message: unknown): Promise<void> {
  // A JSON string crosses the test bridge much faster than a large object graph.
  await page.evaluate((json) => (globalThis as any).postMessage(JSON.parse(json), '*'), JSON.stringify(message));
}

export async function posted(page: Page): Promise<any[]> {
  return page.evaluate(() => (globalThis as any).__posted);
}

/** Waits until two animation frames have run, so coalesced redraws have happened. */
export async function settle(page: Page): Promise<void> {
  await page.evaluate(() => new Promise((resolve) => {
    const raf = (globalThis as any).requestAnimationFrame;
    raf(() => raf(() => setTimeout(resolve, 0)));
  }));
}
