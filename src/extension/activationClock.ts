// Imported first by extension.ts so that the activation time it reports includes loading
// the extension's modules, not only the activate() call.
export const moduleLoadStart = performance.now();
