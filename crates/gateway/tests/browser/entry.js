// The esbuild entry: @elevenlabs/client (the pinned npm package, browser build) as one ES module,
// served to the test page as /vendor/elevenlabs-client.js in place of the CDN URL of its import map.
export * from "@elevenlabs/client";
